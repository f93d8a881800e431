"""The leak scanner finds recorded secrets wherever they land, names the place without the
secret, and lets the operator's key hand-out through: it cannot pass silently."""

from __future__ import annotations

import logging

import gateway.keys
from gateway.keys import generate_key
from tests.secret_watch import WATCH, SecretWatch, WatchHandler, count_secrets

TOKEN = "sk-backend-9Vt4qLm2Zx7R"


def test_every_key_the_gateway_code_generates_is_recorded() -> None:
    issued = gateway.keys.generate_key("gw")
    assert issued.full_key[-32:] in WATCH.key_secrets
    # Test modules that imported the name before the run get the recording one too.
    assert generate_key("gw").full_key[-32:] in WATCH.key_secrets


def test_a_key_or_its_secret_part_or_a_token_anywhere_is_a_leak() -> None:
    watch = SecretWatch()
    key = gateway.keys.generate_key("gw").full_key
    watch.record_key(key)
    watch.record_token(TOKEN)
    watch.see("log gateway.auth", f"authenticated Bearer {key}")
    watch.see("cli stderr", f"secret part only: {key[-32:]}!")
    watch.see("span", f'{{"header": "Bearer {TOKEN}"}}, again {TOKEN}')
    watch.see("clean", f"key id {key[3:15]} and prefix {key[:15]} are fine")
    # Each place is named after the test that was running.
    leaks = {leak.place.rpartition(": ")[2]: leak.count for leak in watch.leaks()}
    assert leaks == {"log gateway.auth": 1, "cli stderr": 1, "span": 2}
    # The report names places, never a secret.
    assert all(key[-32:] not in place and TOKEN not in place for place in leaks)


def test_the_key_hand_out_may_show_its_own_key_and_no_other() -> None:
    watch = SecretWatch()
    other = gateway.keys.generate_key("gw").full_key
    watch.record_key(other)
    handed = gateway.keys.generate_key("gw").full_key
    issued = watch.record_handout(f"key (shown only now): {handed}\n")
    watch.see("keys create stdout", f"key (shown only now): {handed}\n", allowed=issued)
    assert watch.leaks() == []
    watch.see("keys create stdout", f"{handed} and {other}", allowed=issued)
    assert [leak.count for leak in watch.leaks()] == [1]
    # Once handed out, the key is a recorded secret everywhere else.
    watch.see("log", handed)
    assert [leak.count for leak in watch.leaks()] == [1, 1]


def test_log_records_are_scanned_with_their_extras_and_exceptions() -> None:
    watch = SecretWatch()
    watch.record_token(TOKEN)
    logger = logging.getLogger("tests.secret_watch.probe")
    handler = WatchHandler(watch)
    logger.addHandler(handler)
    try:
        logger.warning("nothing here", extra={"backend_token": TOKEN})
        try:
            raise ValueError(TOKEN)
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert [leak.count for leak in watch.leaks()] == [1, 1]


def test_subprocess_output_files_are_scanned() -> None:
    watch = SecretWatch()
    watch.record_token(TOKEN)
    with_leak = watch.output_file("gateway serve")
    with_leak.write(f"INFO backend answered for {TOKEN}\n".encode())
    watch.output_file("quiet").write(b"nothing\n")
    found = watch.leaks()
    assert [(leak.place.endswith("gateway serve output"), leak.count) for leak in found] == [
        (True, 1)
    ]
    watch.close()


def test_short_values_are_not_recorded_and_counting_is_exact() -> None:
    watch = SecretWatch()
    watch.record_token("abc")
    watch.record_token("")
    watch.record_token(None)
    assert watch.tokens == set()
    secret = gateway.keys.generate_key("gw").full_key[-32:]
    assert count_secrets(f"x{secret}{secret}y", frozenset({secret}), frozenset()) == 2

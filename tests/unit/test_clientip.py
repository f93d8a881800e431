"""The client IP: only a trusted proxy's X-Forwarded-For is read, from the right, and no hop a
client writes can make it someone else; plus the throttle's buckets and the setting's checks."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clientip import (
    PEER_MEMO_SIZE,
    Address,
    Peer,
    TrustedProxies,
    decide_client_ip,
    parse_hop,
    throttle_subject,
)
from gateway.config import ConfigError, load_settings

PROXIES = TrustedProxies(["10.0.0.0/8", "192.168.1.1", "fd00::/8", "::1"])
STORES = {"DATABASE_URL": "postgresql://db/gw", "REDIS_URL": "redis://cache/0"}


def _plain(address: Address) -> Address:
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


trusted = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.just(ipaddress.ip_address("192.168.1.1")),
    st.ip_addresses(network="fd00::/8"),
    st.just(ipaddress.ip_address("::1")),
)
untrusted = st.ip_addresses().filter(lambda a: not PROXIES.trusts(_plain(a)))


@st.composite
def written(draw: st.DrawFn, addresses: st.SearchStrategy[Address]) -> bytes:
    """An address as some proxy writes it: bare, with a port, bracketed, padded."""
    address = draw(addresses)
    port = draw(st.integers(0, 65535))
    if address.version == 4:
        text = draw(st.sampled_from([str(address), f"{address}:{port}"]))
    else:
        text = draw(st.sampled_from([str(address), f"[{address}]", f"[{address}]:{port}"]))
    padded = draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " "]))
    return padded.encode("ascii")


garbage = st.one_of(
    st.sampled_from([b"unknown", b"_hidden", b"1.2.3", b"[::1", b"::1]:80", b"fe80::1%eth0"]),
    st.binary(max_size=12),
).filter(lambda hop: b"," not in hop and hop.strip() != b"" and parse_hop(hop) is None)
any_hop = st.one_of(written(trusted), written(untrusted), garbage)


@st.composite
def headers(draw: st.DrawFn, hops: list[bytes]) -> list[bytes]:
    """The hops spread over one or more X-Forwarded-For headers, in order."""
    if not hops:
        return draw(st.sampled_from([[], [b""]]))
    cuts = sorted(draw(st.sets(st.integers(1, len(hops) - 1), max_size=3))) if len(hops) > 1 else []
    bounds = [0, *cuts, len(hops)]
    sep = draw(st.sampled_from([b",", b", ", b" ,"]))
    return [sep.join(hops[a:b]) for a, b in itertools.pairwise(bounds)]


@given(peer=untrusted, values=st.lists(st.binary(max_size=40), max_size=4))
def test_an_untrusted_peer_is_the_client_whatever_it_sends(
    peer: Address, values: list[bytes]
) -> None:
    assert decide_client_ip(str(peer), values, PROXIES) == str(_plain(peer))


@given(
    peer=trusted,
    new_peer=trusted,
    hops=st.lists(any_hop, max_size=6),
    data=st.data(),
)
def test_a_further_trusted_proxy_in_front_changes_nothing(
    peer: Address, new_peer: Address, hops: list[bytes], data: st.DataObject
) -> None:
    before = decide_client_ip(str(peer), data.draw(headers(hops)), PROXIES)
    after = decide_client_ip(
        str(new_peer), data.draw(headers([*hops, str(peer).encode()])), PROXIES
    )
    assert before == after


@given(
    peer=trusted,
    forged=st.lists(st.binary(max_size=20), max_size=3),
    client=untrusted,
    proxies=st.lists(written(trusted), max_size=4),
    data=st.data(),
)
def test_what_a_client_writes_before_its_proxy_cannot_change_its_ip(
    peer: Address, forged: list[bytes], client: Address, proxies: list[bytes], data: st.DataObject
) -> None:
    # The client's own X-Forwarded-For (anything, commas included) arrives first; the trusted
    # proxy appends the address it saw, then each further proxy the one it saw.
    hops = [*forged, str(client).encode(), *proxies]
    assert decide_client_ip(str(peer), data.draw(headers(hops)), PROXIES) == str(_plain(client))


@given(
    peer=trusted,
    before=st.lists(any_hop, max_size=3),
    bad=garbage,
    proxies=st.lists(trusted, max_size=3),
    data=st.data(),
)
def test_a_malformed_hop_is_never_trusted_the_nearest_trusted_address_stands(
    peer: Address, before: list[bytes], bad: bytes, proxies: list[Address], data: st.DataObject
) -> None:
    hops = [*before, bad, *(str(p).encode() for p in proxies)]
    nearest = proxies[0] if proxies else peer
    assert decide_client_ip(str(peer), data.draw(headers(hops)), PROXIES) == str(_plain(nearest))


@given(peer=trusted, hops=st.lists(any_hop, max_size=6), data=st.data())
def test_the_answer_is_the_peer_or_a_hop_and_one_or_many_headers_agree(
    peer: Address, hops: list[bytes], data: st.DataObject
) -> None:
    one = decide_client_ip(str(peer), [b",".join(hops)], PROXIES)
    assert decide_client_ip(str(peer), data.draw(headers(hops)), PROXIES) == one
    candidates = {str(_plain(peer))} | {
        str(parse_hop(hop)) for hop in hops if parse_hop(hop) is not None
    }
    assert one in candidates


@given(values=st.lists(st.binary(max_size=60), max_size=4))
def test_any_header_bytes_are_handled(values: list[bytes]) -> None:
    found = decide_client_ip("10.0.0.1", values, PROXIES)
    assert found is not None
    assert ipaddress.ip_address(found)


def test_examples() -> None:
    assert decide_client_ip("10.1.1.1", [b"203.0.113.9, 10.2.2.2"], PROXIES) == "203.0.113.9"
    assert decide_client_ip("10.1.1.1", [b"203.0.113.9", b"10.2.2.2"], PROXIES) == "203.0.113.9"
    assert decide_client_ip("10.1.1.1", [b"198.51.100.1, 203.0.113.9"], PROXIES) == "203.0.113.9"
    assert decide_client_ip("10.1.1.1", [b"unknown, 10.2.2.2"], PROXIES) == "10.2.2.2"
    assert decide_client_ip("10.1.1.1", [b"10.3.3.3, 10.2.2.2"], PROXIES) == "10.3.3.3"
    assert decide_client_ip("10.1.1.1", [b"[2001:db8::5]:443"], PROXIES) == "2001:db8::5"
    assert decide_client_ip("10.1.1.1", [b"203.0.113.9:5000,,"], PROXIES) == "203.0.113.9"
    assert decide_client_ip("10.1.1.1", [], PROXIES) == "10.1.1.1"
    assert decide_client_ip("203.0.113.7", [b"10.1.1.1"], PROXIES) == "203.0.113.7"
    # The peer's spelling is normalised: a v4-mapped peer is its IPv4 address, zones go.
    assert decide_client_ip("::ffff:10.1.1.1", [b"203.0.113.9"], PROXIES) == "203.0.113.9"
    assert decide_client_ip("fe80::1%eth0", [], PROXIES) == "fe80::1"
    # A Unix socket peer has no address.
    assert decide_client_ip(None, [b"203.0.113.9"], PROXIES) is None
    assert decide_client_ip("/run/gw.sock", [b"203.0.113.9"], PROXIES) is None
    # Nobody trusted: the header is never read.
    assert decide_client_ip("127.0.0.1", [b"203.0.113.9"], TrustedProxies([])) == "127.0.0.1"


peer_texts = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["", "unix", "fe80::1%eth0", "::ffff:10.1.2.3", "10.0.0.1:80"]),
)


@given(peers=st.lists(peer_texts, min_size=1, max_size=30), data=st.data())
def test_a_remembered_peer_is_judged_as_a_fresh_one_would_be(
    peers: list[str], data: st.DataObject
) -> None:
    remembering = TrustedProxies(["10.0.0.0/8", "::1"])
    for peer in peers + peers:  # the second pass is answered from the memo
        values = data.draw(st.lists(any_hop, max_size=3).map(lambda hops: [b",".join(hops)]))
        fresh = TrustedProxies(["10.0.0.0/8", "::1"])
        assert decide_client_ip(peer, values, remembering) == decide_client_ip(peer, values, fresh)


def test_the_peer_memo_is_bounded() -> None:
    proxies = TrustedProxies([])
    for n in range(PEER_MEMO_SIZE + 10):
        assert proxies.peer(str(ipaddress.IPv4Address(n))) is not None
    assert len(proxies._peers) <= PEER_MEMO_SIZE
    assert proxies.peer("0.0.0.7") == Peer(ipaddress.IPv4Address(7), "0.0.0.7", False)


def test_hops_as_proxies_write_them() -> None:
    assert parse_hop(b" 192.0.2.1 ") == ipaddress.ip_address("192.0.2.1")
    assert parse_hop("192.0.2.1:8080") == ipaddress.ip_address("192.0.2.1")
    assert parse_hop("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert parse_hop("::ffff:192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    for bad in ["192.0.2.1:http", "[2001:db8::1]80", "[2001:db8::1", "fe80::1%eth0", "unknown"]:
        assert parse_hop(bad) is None, bad
    assert parse_hop(b"caf\xc3\xa9") is None


def test_trusted_entries_are_addresses_or_networks_of_either_family() -> None:
    proxies = TrustedProxies(["10.1.2.3/8", " 2001:db8::/32", "::ffff:172.16.0.0/108", "::1"])
    for inside in ["10.200.0.1", "2001:db8:ff::1", "172.16.5.5", "::1"]:
        assert proxies.trusts(ipaddress.ip_address(inside)), inside
    for outside in ["11.0.0.1", "2001:db9::1", "172.32.0.1", "::2", "127.0.0.1"]:
        assert not proxies.trusts(ipaddress.ip_address(outside)), outside
    assert proxies
    assert not TrustedProxies([])
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or CIDR network"):
        TrustedProxies(["10.0.0.0/33"])


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "127.0.0.1, nope", "1.2.3.4:80"])
def test_a_bad_trusted_proxy_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^GATEWAY_TRUSTED_PROXIES: "):
        load_settings({**STORES, "GATEWAY_TRUSTED_PROXIES": value})


def test_the_setting_takes_both_families_and_may_be_empty() -> None:
    settings = load_settings({**STORES, "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8, ::1"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "::1")
    assert load_settings({**STORES, "GATEWAY_TRUSTED_PROXIES": ""}).trusted_proxies == ()


def test_failures_are_counted_per_ipv4_address_and_per_ipv6_slash_64() -> None:
    assert throttle_subject("203.0.113.9") == "203.0.113.9"
    assert throttle_subject("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert throttle_subject("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert throttle_subject(None) == "unknown"
    assert throttle_subject("not an address") == "unknown"

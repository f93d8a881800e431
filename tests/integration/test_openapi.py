"""docs/openapi.yaml against a live gateway (real stores, the simulator behind it): schemathesis
generates requests from the description; no answer is a 5xx, and each one conforms to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.chain.route import TABLE
from gateway.config import load_settings
from tests.integration.served import serve_gateway
from tests.integration.test_walking_skeleton import create_key

OPENAPI = Path(__file__).parents[2] / "docs" / "openapi.yaml"
EXAMPLES_PER_OPERATION = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]


def test_the_description_names_every_route_and_the_probes() -> None:
    schema = schemathesis.openapi.from_path(OPENAPI)
    described = {result.ok().label for result in schema.get_all_operations()}
    served = {f"{e.method} {e.path}" for e in TABLE.values()} | {"GET /healthz", "GET /readyz"}
    assert described == served


def test_a_live_gateway_conforms_to_its_openapi_description(env: dict[str, str]) -> None:
    key = create_key(env)
    auth = {"Authorization": f"Bearer {key}"}
    # Room for every example: a 429 conforms too, but would hide what follows it.
    limits = {
        "DEFAULT_RPM": "1000000",
        "DEFAULT_TPM": "1000000000",
        # ignored_auth sends requests without a key: each a failure the per-IP throttle counts.
        "AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN": "0",
    }
    schema = schemathesis.openapi.from_path(OPENAPI)
    with serve_gateway(load_settings({**env, **limits})) as port:
        base_url = f"http://127.0.0.1:{port}"
        seen: set[tuple[str, int]] = set()

        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(headers=auth), served_model=st.booleans())
            def conforms(case: Any, served_model: bool) -> None:
                if served_model and isinstance(case.body, dict) and "model" in case.body:
                    # Generated names are never served: half the time one that is, for answers.
                    case.body["model"] = "llama3.2:1b"
                response = case.call(base_url=base_url, headers=auth, timeout=30)
                seen.add((case.operation.label, response.status_code))
                case.validate_response(
                    response, checks=CHECKS, headers=auth, transport_kwargs={"base_url": base_url}
                )

            conforms()
    # The run reached every route, and got real answers from some, not only refusals.
    assert {label for label, _ in seen} == {r.ok().label for r in schema.get_all_operations()}
    assert {label for label, status in seen if status == 200} == {
        r.ok().label for r in schema.get_all_operations()
    }

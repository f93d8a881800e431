"""The ASGI callable: lifespan, health, and auth → route → admit → stream → settle for the rest."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime

import anyio
import msgspec

from gateway import __version__
from gateway.audit import audit_row, prompt_row
from gateway.chain import route
from gateway.chain.budget import periods_at, prompt_tokens_bound
from gateway.chain.catalog import local_answer, me_answer
from gateway.chain.shape import shape_request
from gateway.chain.values import Outcome, Principal
from gateway.clientip import TrustedProxies
from gateway.config import Settings, load_settings
from gateway.errors import GatewayError, HeadersTooLarge, ModelNotFound, ServiceUnavailable
from gateway.http import ClientDisconnected, Receive, Request, Responder, Scope, Send, read_body
from gateway.playground import Playground
from gateway.playground import owns as playground_owns
from gateway.services import Readiness, Services
from gateway.tasks import run_to_end
from gateway.telemetry import NoTelemetry, RequestTrace, Telemetry, telemetry_from_env

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode

# How long another thread may hold the GIL while the event loop waits for it: Python's default
# is 5 ms. The telemetry export threads encode batches of spans in Python, and an event loop
# kept waiting that long showed in the p99 (PERFORMANCE.md).
GIL_SWITCH_INTERVAL_S = 0.0005


class _Health(msgspec.Struct):
    status: str
    version: str


class _Ready(msgspec.Struct):
    status: str
    checks: Readiness


class _Capacity:
    """Requests this worker is serving; past the cap one is refused at once, never queued."""

    __slots__ = ("busy", "limit")

    def __init__(self, limit: int) -> None:
        self.busy = 0
        self.limit = limit

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.busy >= self.limit:
            raise ServiceUnavailable(
                "the gateway is serving as many requests as it can",
                headers=((b"retry-after", b"1"),),
            )
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


class Gateway:
    """One gateway: `running()` builds its services (the lifespan does it for a server)."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.services: Services | None = None
        self._request_id_header = settings.request_id_header.lower().encode("ascii")
        # Parsed once: each request only looks its peer up in them.
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self._given_telemetry = telemetry
        # Read once here, so serving the page never touches the disk.
        self._playground = (
            Playground(settings.request_id_header) if settings.playground_enabled else None
        )
        self.telemetry: Telemetry = NoTelemetry()
        self._capacity = _Capacity(settings.max_concurrent_requests)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Services]:
        # Built here, in the worker process that serves, unless a test brought its own.
        telemetry = self._given_telemetry or telemetry_from_env()
        try:
            async with Services.open(self.settings) as services:
                services.observe(telemetry)
                self.services, self.telemetry = services, telemetry
                try:
                    yield services
                finally:
                    self.services, self.telemetry = None, NoTelemetry()
        finally:
            if self._given_telemetry is None:
                with anyio.CancelScope(shield=True):
                    await telemetry.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.running():
                # What start-up built lives as long as the worker: out of the collector's sight,
                # so collections that requests trigger no longer walk it.
                gc.freeze()
                sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except Exception as exc:
            log.exception("gateway lifespan failed")
            kind = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{kind}.failed", "message": type(exc).__name__})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, self._request_id_header, proxies=self._proxies)
        responder = Responder(send, self._request_id_header, request)
        services = self.services
        if _header_bytes(request) > self.settings.max_header_bytes:
            # Hypercorn bounds a head still arriving; one that came whole in a read is ours.
            await responder.error(HeadersTooLarge(), request.surface)
        elif request.path == "/healthz":
            await responder.whole(200, _encode(_Health("ok", __version__)))
        elif self._playground is not None and playground_owns(request.path):
            # Public static files: no key, no audit row; every call the page makes carries a key.
            await self._playground.serve(request, responder)
        elif services is None:
            await responder.error(ServiceUnavailable(), request.surface)
        elif request.path == "/readyz":
            readiness = await services.readiness()
            ready = readiness.ready
            await responder.whole(
                200 if ready else 503, _encode(_Ready("ready" if ready else "unready", readiness))
            )
        else:
            await self._audited(services, request, receive, responder)

    async def _audited(
        self, services: Services, request: Request, receive: Receive, responder: Responder
    ) -> None:
        """Every proxied request, served or refused, leaves exactly one audit row (and a trace)."""
        started_s = time.perf_counter()
        outcome = Outcome()
        admitted = False
        body = b""
        matched = request.path if request.path in route.TABLE else None
        trace = self.telemetry.request(
            request.method, matched, request.headers, request.client_ip,
            request.request_id,
        )  # fmt: skip
        with trace:
            try:
                services.audit.admit()
                admitted = True
                with self._capacity.slot():
                    body = await self._proxy(services, request, receive, responder, outcome, trace)
            except GatewayError as exc:
                outcome.error_code = outcome.error_code or exc.code
                if not responder.started:
                    trace.deny(exc.code)
                    await responder.error(exc, request.surface)
            except ClientDisconnected:
                outcome.client_gone = True
            except Exception:
                # The one place an unexpected failure is caught: logged whole, answered generically.
                log.exception("unhandled error in request %s", request.request_id)
                outcome.error_code = GatewayError.code
                if not responder.started:
                    await responder.error(GatewayError(), request.surface)
            finally:
                row = audit_row(request, responder, outcome, time.perf_counter() - started_s)
                services.audit.record(row, prompt_row(row, outcome, body), admitted=admitted)
                trace.end(row.status, row.error_code)

    async def _proxy(
        self,
        services: Services,
        request: Request,
        receive: Receive,
        responder: Responder,
        outcome: Outcome,
        trace: RequestTrace,
    ) -> bytes:
        """Serve one request; returns the body it forwarded (empty for local answers)."""
        with trace.stage("auth"):
            principal = await services.authenticator.authenticate(
                request.header_values(b"authorization"), request.client_ip
            )
        outcome.principal = principal
        trace.set_tenant(principal.tenant_id, principal.tenant_name)
        endpoint = route.resolve(request.method, request.raw_path)
        if endpoint.kind is route.Kind.ME:
            await responder.whole(200, await self._me(services, principal))
            return b""
        if endpoint.kind in route.LOCAL:
            await responder.whole(200, local_answer(endpoint.kind, principal, services.discovery))
            return b""
        body = await read_body(
            request,
            receive,
            self.settings.max_request_body_bytes,
            timeout_s=self.settings.client_body_timeout_s,
        )
        with trace.stage("route"):
            routed = shape_request(endpoint, body, self.settings.max_num_predict)
            outcome.model = routed.model
            outcome.streamed = routed.stream
            # Not allowed and not there look the same: a caller learns nothing about others.
            if not principal.models.permits(routed.model, services.discovery.models()):
                raise ModelNotFound
        trace.set_model(routed.model)
        # Rate limits and the budget reservation are one atomic script: one span for both.
        with trace.stage("limits_and_budget"):
            grant = await services.admission.admit(
                principal, prompt_tokens_bound(len(body)), routed.max_completion_tokens
            )
        if principal.prompt_log_days is not None:
            outcome.transcript = bytearray()
        try:
            await services.relay.forward(
                request, endpoint, routed, responder, receive, grant.headers, outcome, trace
            )
        finally:
            # After the last byte, and even when the client left: never delays the answer.
            # A cancellation that lands while the settle waits for its reply finds its command
            # queued already: Redis runs it whether or not the reply is read.
            await run_to_end(services.admission.settle(grant, outcome))
        return body

    async def _me(self, services: Services, principal: Principal) -> bytes:
        used = await services.admission.used(principal, periods_at(datetime.now(UTC)))
        return me_answer(principal, self.settings.key_prefix, used, services.discovery.models())


def _header_bytes(request: Request) -> int:
    # As on the wire: name, ": ", value, CRLF.
    return sum(len(name) + len(value) + 4 for name, value in request.headers)


def create_app() -> Gateway:
    """What a server imports (`gateway.app:create_app()`): settings from the environment."""
    return Gateway(load_settings(os.environ))

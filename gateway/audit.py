"""The audit trail: a row per request, held in a bounded buffer and COPYed to Postgres in batches.

A request is served only while the buffer has room, and its row is never dropped after.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import anyio
import msgspec

from gateway.chain.values import Outcome
from gateway.errors import ServiceUnavailable
from gateway.http import Request, Responder
from gateway.store.pg import Database, Rejected
from gateway.upstream.transcript import TRANSCRIPT_MAX_BYTES, answer_text

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
_MAX_TEXT = 200
_FINAL_FLUSH_S = 10.0
_WARN_EVERY_S = 10.0


class AuditRow(msgspec.Struct, array_like=True):
    """One request as gateway.audit_log stores it; the field order is the COPY column order."""

    ts: datetime
    request_id: str
    tenant_id: str | None
    key_id: str | None
    client_ip: str | None
    method: str
    route: str
    model: str | None
    backend: str | None
    status: int
    error_code: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ttfb_ms: float | None
    duration_ms: float
    streamed: bool | None


class PromptRow(msgspec.Struct, array_like=True):
    """One request's prompt and answer, for keys that opted in; the order is the COPY order."""

    ts: datetime
    request_id: str
    tenant_id: str
    key_id: str
    model: str | None
    request: str  # the JSON body as the client sent it
    response: str | None
    expires_at: datetime


class AuditFull(ServiceUnavailable):
    """The buffer has no room: serving now would mean serving unaudited."""

    message = "the gateway cannot record requests right now; retry shortly"

    def __init__(self) -> None:
        super().__init__(headers=((b"retry-after", b"1"),))


def text(value: str | None, limit: int = _MAX_TEXT) -> str | None:
    """Caller-chosen text made safe for a Postgres text column: no NUL, bounded length."""
    if value is None:
        return None
    return value.replace("\x00", "\ufffd")[:limit]


def audit_row(
    request: Request, responder: Responder, outcome: Outcome, duration_s: float
) -> AuditRow:
    """The row for a request that ended: the status the client saw, the tokens it was charged.

    Stamped when it ended, as access logs are, so rows arrive in about the order of their times.
    """
    if responder.started:
        status = responder.status
    else:
        # Nothing was sent: the client left first (499, as proxies log it), or we never could.
        status = CLIENT_CLOSED if outcome.client_gone else 500
    error_code = outcome.error_code
    if error_code is None and outcome.client_gone:
        error_code = "client_closed"
    principal, usage = outcome.principal, outcome.usage
    return AuditRow(
        ts=datetime.now(UTC),
        request_id=request.request_id,
        tenant_id=principal.tenant_id if principal else None,
        key_id=principal.key_id if principal else None,
        client_ip=request.client_ip,
        method=text(request.method, 16) or "",
        route=text(request.path) or "",
        model=text(outcome.model),
        backend=outcome.backend,
        status=status,
        error_code=error_code,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        ttfb_ms=outcome.ttfb_s * 1000 if outcome.ttfb_s is not None else None,
        duration_ms=duration_s * 1000,
        streamed=outcome.streamed,
    )


def prompt_row(row: AuditRow, outcome: Outcome, body: bytes) -> PromptRow | None:
    """The prompt-log row of a forwarded request whose key opted in; None for every other."""
    principal = outcome.principal
    if principal is None or principal.prompt_log_days is None or not body:
        return None
    # jsonb refuses the \u0000 escape (and nothing else valid JSON can hold), so it is replaced.
    request = body.decode("utf-8", "replace").replace("\\u0000", "\\ufffd")
    relayed = outcome.transcript
    return PromptRow(
        ts=row.ts,
        request_id=row.request_id,
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        model=row.model,
        request=request,
        response=text(answer_text(relayed), TRANSCRIPT_MAX_BYTES) if relayed else None,
        expires_at=row.ts + timedelta(days=principal.prompt_log_days),
    )


class AuditLog:
    """Rows wait here until the writer COPYs them; a full buffer refuses new requests.

    A request is served only if the buffer had room when it began (`admit`), and its row is
    kept whatever happens by the time it ends, so memory is bounded by `capacity` plus the
    requests in flight. Requests refused before that cost no backend time: their rows may use
    a second `capacity` of room, then are dropped and counted, so a flood of bad keys while
    Postgres is away cannot grow memory without bound.
    """

    def __init__(self, database: Database, *, capacity: int, flush_interval_s: float) -> None:
        self._database = database
        self.capacity = capacity
        self._flush_interval_s = flush_interval_s
        self._entries: list[tuple[AuditRow, PromptRow | None]] = []
        self._wake = anyio.Event()
        self.dropped = 0
        self._warned_at_s = float("-inf")

    @property
    def depth(self) -> int:
        """Rows waiting for Postgres."""
        return len(self._entries)

    @property
    def full(self) -> bool:
        return self.depth >= self.capacity

    def admit(self) -> None:
        """Refuse a request (`AuditFull`) while the rows already waiting fill the buffer."""
        if self.full:
            self._wake.set()
            raise AuditFull

    def record(self, row: AuditRow, prompt: PromptRow | None = None, *, admitted: bool) -> None:
        """Keep a row for the writer; an admitted request's row is never dropped."""
        if not admitted and self.depth >= 2 * self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit: buffer full, %d refusals left unrecorded", self.dropped)
            return
        self._entries.append((row, prompt))
        if len(self._entries) >= self.capacity // 4:
            # A busy gateway flushes on volume, not only on the clock, so it never fills up.
            self._wake.set()

    async def flush(self) -> int:
        """Write what is buffered now; on failure it stays buffered. Returns the rows written."""
        batch = self._entries[: len(self._entries)]
        if not batch:
            return 0
        try:
            await self._write(batch)
        except Rejected:
            # Some value Postgres refuses hides in the batch; it must not hold the others hostage.
            for done, entry in enumerate(batch):
                try:
                    await self._write_alone(entry)
                except ServiceUnavailable:
                    del self._entries[:done]
                    raise
        del self._entries[: len(batch)]
        return len(batch)

    async def _write(self, batch: list[tuple[AuditRow, PromptRow | None]]) -> None:
        audit_rows = [msgspec.structs.astuple(row) for row, _ in batch]
        prompt_rows = [msgspec.structs.astuple(p) for _, p in batch if p is not None]
        await self._database.write_audit(audit_rows, prompt_rows)

    async def _write_alone(self, entry: tuple[AuditRow, PromptRow | None]) -> None:
        row, prompt = entry
        try:
            await self._write([entry])
        except Rejected:
            pass
        else:
            return
        if prompt is not None:
            log.error("prompt log row %s refused by Postgres; kept its audit row", row.request_id)
            await self._write_alone((row, None))
            return
        log.error("audit row %s refused by Postgres; dropped", row.request_id)
        self.dropped += 1

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush on an interval or on volume until cancelled, then drain, shielded and bounded."""
        task_status.started()
        try:
            while True:
                with anyio.move_on_after(self._flush_interval_s):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush_logged()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_FINAL_FLUSH_S):
                while self._entries:
                    await self._flush_logged()
            if self._entries:
                log.error("audit: %d rows could not be written before exit", len(self._entries))

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except ServiceUnavailable:
            now_s = time.monotonic()
            if now_s - self._warned_at_s >= _WARN_EVERY_S:
                self._warned_at_s = now_s
                log.warning("audit: Postgres unavailable, %d rows kept", len(self._entries))
            await anyio.sleep(self._flush_interval_s)

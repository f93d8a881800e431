"""The durable usage ledger: settled tokens gathered in memory and added to Postgres in batches."""

from __future__ import annotations

import logging
from datetime import date

import anyio

from gateway.chain.budget import TOTAL_START, Periods
from gateway.errors import ServiceUnavailable
from gateway.store.pg import Database, UsageRow

log = logging.getLogger(__name__)

Slot = tuple[str, str, str, date]  # tenant id, key id, period, period start


class Ledger:
    """Batches usage per (key, period); a batch Postgres refuses is kept and tried again."""

    def __init__(self, database: Database, *, flush_interval_s: float) -> None:
        self._database = database
        self._flush_interval_s = flush_interval_s
        self._pending: dict[Slot, list[int]] = {}
        self._flushing: dict[Slot, list[int]] = {}
        # One batch in flight at a time: `unflushed` counts it until it lands or comes back.
        self._one_flush = anyio.Lock()

    def record(
        self, tenant_id: str, key_id: str, periods: Periods, prompt: int, completion: int
    ) -> None:
        for period, start in (
            ("day", periods.day),
            ("month", periods.month),
            ("total", TOTAL_START),
        ):
            counts = self._pending.setdefault((tenant_id, key_id, period, start), [0, 0, 0])
            counts[0] += prompt
            counts[1] += completion
            counts[2] += 1

    def unflushed(self, tenant_id: str, key_id: str, periods: Periods) -> tuple[int, ...]:
        """Tokens recorded here but not yet in Postgres: key day, month, total, tenant ..."""
        starts = {"day": periods.day, "month": periods.month, "total": TOTAL_START}
        sums = [0] * 6
        for batch in (self._pending, self._flushing):
            for (tenant, key, period, start), (prompt, completion, _) in batch.items():
                if tenant != tenant_id or starts[period] != start:
                    continue
                index = ("day", "month", "total").index(period)
                sums[index + 3] += prompt + completion
                if key == key_id:
                    sums[index] += prompt + completion
        return tuple(sums)

    async def flush(self) -> None:
        """Write everything recorded so far. A batch Postgres refuses, or whose write is
        cancelled, comes back to be tried again: should its commit have landed after all, it is
        counted twice, and a budget reached early beats one overspent."""
        async with self._one_flush:
            if not self._pending:
                return
            self._flushing, self._pending = self._pending, {}
            rows = [
                UsageRow(tenant, key, period, start, *counts)
                for (tenant, key, period, start), counts in self._flushing.items()
            ]
            try:
                await self._database.add_usage(rows)
            except BaseException:
                for slot, counts in self._flushing.items():
                    kept = self._pending.setdefault(slot, [0, 0, 0])
                    for i, count in enumerate(counts):
                        kept[i] += count
                raise
            finally:
                self._flushing = {}

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush on an interval until cancelled, then once more, shielded, before leaving."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(self._flush_interval_s)
                # A shutdown lets a write in progress finish (within the database's deadline).
                with anyio.CancelScope(shield=True):
                    await self._flush_logged()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except ServiceUnavailable:
            log.warning("usage ledger: Postgres unavailable, %d rows kept", len(self._pending))

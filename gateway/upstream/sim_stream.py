"""How the simulator delivers a completion: paced, a frame per body message, crashing on demand."""

import time
from typing import Literal

import anyio

from gateway.upstream.sim_answers import Clock, Framer, Plan
from gateway.upstream.sim_config import SimCancel, SimConfig, SimStats
from gateway.upstream.sim_http import Exchange

Outcome = Literal["finished", "crashed", "cancelled"]


class SimulatedCrash(RuntimeError):
    """Raised out of the app mid-stream so the server drops the connection without an end."""


async def pause_ms(delay_ms: float) -> None:
    if delay_ms > 0:
        await anyio.sleep(delay_ms / 1000)


class Delivery:
    """Sends planned answers at the configured pace and keeps the stream counters."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self._config = config
        self._stats = stats

    async def answer(self, exchange: Exchange, framer: Framer, plan: Plan, *, stream: bool) -> None:
        clock = Clock()
        if stream:
            await self._stream(exchange, framer, plan, clock)
            return
        await pause_ms(self._config.ttft_ms)
        clock.first_token()
        await pause_ms(self._config.token_delay_ms * max(0, plan.eval_count - 1))
        body = framer.whole(plan, clock.timings())
        if self._config.die_after_chunks is None:
            await exchange.respond(200, body)
            return
        await exchange.respond_cut(body)
        self._stats.streams_crashed += 1
        raise SimulatedCrash("whole answer dropped halfway, as configured")

    async def _stream(self, exchange: Exchange, framer: Framer, plan: Plan, clock: Clock) -> None:
        await exchange.start_stream(framer.media_type)
        self._stats.streams_open += 1
        outcome: Outcome = "cancelled"
        sent = [0]
        try:
            async with anyio.create_task_group() as task_group:
                # A real server stops generating when its client leaves; so does this one.
                task_group.start_soon(_cancel_on_disconnect, exchange, task_group.cancel_scope)
                outcome = await self._emit(exchange, framer, plan, clock, sent)
                task_group.cancel_scope.cancel()
        finally:
            self._stats.streams_open -= 1
        if outcome == "crashed":
            self._stats.streams_crashed += 1
            chunks = self._config.die_after_chunks
            raise SimulatedCrash(f"stream dropped after {chunks} chunks, as configured")
        if outcome == "finished":
            self._stats.streams_finished += 1
        else:
            self._stats.streams_cancelled += 1
            request_id = (exchange.header(b"x-request-id") or b"").decode("latin-1")
            self._stats.cancels.append(SimCancel(request_id, time.monotonic(), sent[0]))

    async def _emit(
        self, exchange: Exchange, framer: Framer, plan: Plan, clock: Clock, sent: list[int]
    ) -> Outcome:
        die_after = self._config.die_after_chunks
        await pause_ms(self._config.ttft_ms)
        clock.first_token()
        for index, token in enumerate(plan.tokens):
            if index == die_after:
                return "crashed"
            if index > 0:
                await pause_ms(self._config.token_delay_ms)
            await exchange.frame(framer.token(token))
            sent[0] += 1
        if die_after is not None:
            return "crashed"  # never a proper end, however few tokens there were
        for frame in framer.finish(plan, clock.timings()):
            await exchange.frame(frame)
        await exchange.end_stream()
        return "finished"


async def _cancel_on_disconnect(exchange: Exchange, scope: anyio.CancelScope) -> None:
    await exchange.wait_disconnect()
    scope.cancel()

"""The per-request scripts keep Redis connections between calls, but never the whole pool."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio

from gateway.devservices import RedisServer
from gateway.store.redis import Cache

pytestmark = pytest.mark.anyio

POOL_SIZE = 4


async def settle_nothing(cache: Cache, n: int) -> None:
    """The settle script on keys of no request: it releases a lease that is not there."""
    keys = [f"t:burst:{n}:{part}" for part in range(12)]
    await cache.settle(keys, [f"member-{n}", 0, "0", "0", "0", "0", "0", "0"])


async def test_a_burst_of_scripts_leaves_the_pool_to_other_calls(own_redis: RedisServer) -> None:
    async with (
        Cache.open(own_redis.url, prefix="t", timeout_s=1, max_connections=POOL_SIZE) as cache,
        redis.asyncio.Redis.from_url(own_redis.url) as admin,
    ):
        # Paused, Redis answers none of them: each call holds a connection of its own at once.
        await admin.client_pause(300)
        async with anyio.create_task_group() as tg:
            for n in range(POOL_SIZE):
                tg.start_soon(settle_nothing, cache, n)
        clients = await admin.client_list()
        assert sum(client["cmd"] == "evalsha" for client in clients) == POOL_SIZE
        # The scripts kept some of those connections for their next calls; a call of another
        # kind still finds one at once, where a pool the scripts held whole would make it wait
        # out its timeout and fail.
        with anyio.fail_after(0.5):
            assert await cache.ping()

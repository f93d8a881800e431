-- Extend the leases of requests still in flight on this replica (one tenant's leases).
-- KEYS  1 leases   2 lease tokens
-- ARGV  1 lease ttl ms   2.. members

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl_ms = tonumber(ARGV[1])
for i = 2, #ARGV do
  -- XX: a lease that already expired (its reservation released) is not brought back.
  redis.call('ZADD', KEYS[1], 'XX', now_ms + ttl_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl_ms * 2)
redis.call('PEXPIRE', KEYS[2], ttl_ms * 2)
return 1

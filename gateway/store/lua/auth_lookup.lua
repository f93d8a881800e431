-- The shared key-cache lookup and the per-address auth-failure throttle, in one round trip.
-- A key whose digest is cached was proven valid before, so it is answered whatever the address;
-- on a miss the attempt is counted before any Postgres or argon2 work, and the caller removes it
-- again once the key proves valid, so what stays in the window is failures (and attempts whose
-- client left mid-check). At most `limit` attempts per window ever reach a verify.
--
-- KEYS  1 key entry (hash: digest -> principal)   2 attempts (zset: member -> ms)
-- ARGV  1 digest   2 limit   3 window ms   4 member, unique to this attempt
-- Reply {principal} on a hit; {false, 0} on a miss, the attempt counted;
--       {false, retry_after_ms} when the window is full, nothing counted.

local blob = redis.call('HGET', KEYS[1], ARGV[1])
if blob then
  return {blob}
end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit = tonumber(ARGV[2])
local window_ms = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - window_ms)
if redis.call('ZCARD', KEYS[2]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {false, math.max(tonumber(oldest[2]) + window_ms - now_ms, 1)}
end
redis.call('ZADD', KEYS[2], now_ms, ARGV[4])
redis.call('PEXPIRE', KEYS[2], window_ms)
return {false, 0}

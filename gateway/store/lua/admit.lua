-- Admit one request or refuse it, atomically, in one round trip: the key's and the tenant's
-- request windows, token windows, in-flight leases and token budgets. Every key carries the
-- tenant's hash tag, so the whole admission lives in one cluster slot.
--
-- KEYS  1 rpm (key)   2 rpm (tenant)   3 tpm (key)   4 tpm (tenant)
--       5 leases (zset member -> expiry ms)   6 lease tokens (hash member -> reserved tokens)
--       7..12 budget counters: key day, month, total, tenant day, month, total
--       13 tpm totals (key)   14 tpm totals (tenant)
-- ARGV  1 member "<key_id>:<unique>"   2 key_id
--       3 rpm key   4 rpm tenant   5 tpm key   6 tpm tenant   7 in-flight key   8 in-flight tenant
--       9 lease ttl ms   10 tokens to reserve
--       11..16 budget per counter (-1 unlimited)   17..22 seed per counter (-1 none)
--       23..28 counter ttl seconds (0 keeps it)
-- Reply {status, retry_after_ms, rpm_limit, rpm_remaining, rpm_reset_ms,
--        tpm_limit, tpm_remaining, tpm_reset_ms, detail}
-- status 0 admitted; 1/2 rpm key/tenant; 3/4 tpm key/tenant; 5/6 in-flight key/tenant;
--        7/8 budget key/tenant (detail = counter 1..6); 9 counters missing (detail = bitmask)

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_s = tonumber(clock[1])
local WINDOW_MS = 60000

local function requests_in_window(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - WINDOW_MS)
  local count = redis.call('ZCARD', key)
  local reset_ms = 0
  if count > 0 then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    reset_ms = tonumber(oldest[2]) + WINDOW_MS - now_ms
  end
  return count, reset_ms
end

-- Tokens per second bucket; 60 buckets make the minute slide one second at a time. A hash
-- beside the buckets keeps their 'sum' and 'oldest' second, so an admission reads two fields,
-- not sixty. The buckets are walked only when the oldest has aged out (about once a second
-- under load) or 'oldest' is missing: a new window, or one an earlier version wrote.
local function tokens_in_window(key, totals)
  local kept = redis.call('HMGET', totals, 'sum', 'oldest')
  local total, oldest = tonumber(kept[1]), tonumber(kept[2])
  if total == nil or oldest == nil or oldest <= now_s - 60 then
    local buckets = redis.call('HGETALL', key)
    local stale = {}
    total, oldest = 0, nil
    for i = 1, #buckets, 2 do
      local second = tonumber(buckets[i])
      if second <= now_s - 60 then
        stale[#stale + 1] = buckets[i]
      else
        total = total + tonumber(buckets[i + 1])
        if oldest == nil or second < oldest then oldest = second end
      end
    end
    if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
    if oldest == nil then
      redis.call('DEL', totals)
    else
      redis.call('HSET', totals, 'sum', total, 'oldest', oldest)
      redis.call('EXPIRE', totals, 120)
    end
  end
  local reset_ms = 0
  if oldest ~= nil then reset_ms = (oldest + 60) * 1000 - now_ms end
  return total, reset_ms
end

-- Leases of a crashed replica are never renewed: they expire here, with their reservations.
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_ms)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms)
  redis.call('HDEL', KEYS[6], unpack(expired))
end
local key_prefix = ARGV[2] .. ':'
local tenant_flights, key_flights, tenant_reserved, key_reserved = 0, 0, 0, 0
local live = redis.call('HGETALL', KEYS[6])
for i = 1, #live, 2 do
  local reserved = tonumber(live[i + 1])
  tenant_flights = tenant_flights + 1
  tenant_reserved = tenant_reserved + reserved
  if string.sub(live[i], 1, #key_prefix) == key_prefix then
    key_flights = key_flights + 1
    key_reserved = key_reserved + reserved
  end
end

local rpm_key, rpm_key_reset = requests_in_window(KEYS[1])
local rpm_tenant, rpm_tenant_reset = requests_in_window(KEYS[2])
local tpm_key, tpm_key_reset = tokens_in_window(KEYS[3], KEYS[13])
local tpm_tenant, tpm_tenant_reset = tokens_in_window(KEYS[4], KEYS[14])
local rpm_key_limit, rpm_tenant_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local tpm_key_limit, tpm_tenant_limit = tonumber(ARGV[5]), tonumber(ARGV[6])

local function reply(status, retry_ms, detail)
  local taken = 0
  if status == 0 then taken = 1 end
  local rpm_left = math.min(rpm_key_limit - rpm_key, rpm_tenant_limit - rpm_tenant) - taken
  local tpm_left = math.min(tpm_key_limit - tpm_key, tpm_tenant_limit - tpm_tenant)
  local rpm_reset = math.max(rpm_key_reset, 0)
  -- Admitted into an empty window, this request is its oldest: its slot frees in a minute.
  if taken == 1 and rpm_key == 0 then rpm_reset = WINDOW_MS end
  return {status, retry_ms, rpm_key_limit, math.max(0, rpm_left), rpm_reset,
          tpm_key_limit, math.max(0, tpm_left), math.max(tpm_key_reset, 0), detail}
end

if rpm_key >= rpm_key_limit then return reply(1, rpm_key_reset, 0) end
if rpm_tenant >= rpm_tenant_limit then return reply(2, rpm_tenant_reset, 0) end
if tpm_key >= tpm_key_limit then return reply(3, tpm_key_reset, 0) end
if tpm_tenant >= tpm_tenant_limit then return reply(4, tpm_tenant_reset, 0) end
if key_flights >= tonumber(ARGV[7]) then return reply(5, 1000, 0) end
if tenant_flights >= tonumber(ARGV[8]) then return reply(6, 1000, 0) end

local reservation = tonumber(ARGV[10])
local used, missing, bit = {}, 0, 1
for i = 1, 6 do
  if tonumber(ARGV[10 + i]) >= 0 then
    local value = redis.call('GET', KEYS[6 + i])
    local seed = tonumber(ARGV[16 + i])
    if not value and seed >= 0 then
      -- NX: a replica that seeded first from the same ledger wins; both saw the same truth.
      local ttl_s = tonumber(ARGV[22 + i])
      if ttl_s > 0 then
        redis.call('SET', KEYS[6 + i], seed, 'EX', ttl_s, 'NX')
      else
        redis.call('SET', KEYS[6 + i], seed, 'NX')
      end
      value = redis.call('GET', KEYS[6 + i])
    end
    if value then used[i] = tonumber(value) else missing = missing + bit end
  end
  bit = bit * 2
end
if missing > 0 then return reply(9, 0, missing) end
for i = 1, 6 do
  if used[i] ~= nil then
    local reserved, status = key_reserved, 7
    if i > 3 then reserved, status = tenant_reserved, 8 end
    if used[i] + reserved + reservation > tonumber(ARGV[10 + i]) then
      return reply(status, 0, i)
    end
  end
end

local lease_ttl_ms = tonumber(ARGV[9])
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], WINDOW_MS + 1000)
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[2], WINDOW_MS + 1000)
redis.call('ZADD', KEYS[5], now_ms + lease_ttl_ms, ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], reservation)
redis.call('PEXPIRE', KEYS[5], lease_ttl_ms * 2)
redis.call('PEXPIRE', KEYS[6], lease_ttl_ms * 2)
return reply(0, 0, 0)

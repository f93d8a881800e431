-- Settle one admitted request after its response ended: release its lease and reservation,
-- and count the tokens it really used in the token windows and the budget counters.
--
-- KEYS  1 tpm (key)   2 tpm (tenant)   3 leases   4 lease tokens
--       5..10 budget counters: key day, month, total, tenant day, month, total
--       11 tpm totals (key)   12 tpm totals (tenant)
-- ARGV  1 member   2 tokens used   3..8 "1" where that counter is budgeted

local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  for i = 1, 2 do
    redis.call('HINCRBY', KEYS[i], now_s, tokens)
    redis.call('EXPIRE', KEYS[i], 120)
    -- The running total admit.lua reads; it trusts it only beside 'oldest', which its rebuild
    -- sets. A clock that stepped back may leave 'oldest' late: these tokens then count a little
    -- longer than a minute, never shorter.
    redis.call('HINCRBY', KEYS[10 + i], 'sum', tokens)
    redis.call('EXPIRE', KEYS[10 + i], 120)
  end
  for i = 1, 6 do
    -- A missing counter is seeded from the durable ledger at the next admission;
    -- creating it here would start it from zero and forget the period's earlier usage.
    if ARGV[2 + i] == '1' and redis.call('EXISTS', KEYS[4 + i]) == 1 then
      redis.call('INCRBY', KEYS[4 + i], tokens)
    end
  end
end
return 1

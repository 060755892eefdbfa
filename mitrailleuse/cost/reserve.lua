-- Reserve a call's worst-case cost from a run's budget, or refuse it.
-- KEYS[1] the run hash (fields spent_usd, reserved_usd); ARGV[1] cost, ARGV[2] limit.
-- Returns 1: reserved; 0: not now (other calls hold reservations: their actual costs may
-- leave room); -1: never (nothing else is reserved and the budget cannot cover this call).
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_usd') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_usd') or '0')
local cost = tonumber(ARGV[1])
if spent + reserved + cost > tonumber(ARGV[2]) + 1e-12 then
  if reserved > 1e-12 then
    return 0
  end
  return -1
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_usd', ARGV[1])
return 1

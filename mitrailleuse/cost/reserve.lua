-- Reserve a call's worst-case cost from a run's budget, or refuse it (prepended: held.lua).
-- KEYS: 1 the run hash (fields spent_usd, reserved_usd), 2 the reservations (holder -> usd).
-- ARGV: 1 cost, 2 limit, 3 holder ("<owner> <token>"), 4 alive-key prefix.
-- Returns 1: reserved; 0: not now (live calls hold reservations: their actual costs may leave
-- room); -1: never (nothing else is reserved and the budget cannot cover this call).
-- A reservation whose holder died (a killed worker) is given back before refusing anything.
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2]) + 1e-12
local function over()
  local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_usd') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_usd') or '0')
  return spent + reserved + cost > limit, reserved
end
local refused, reserved = over()
if refused then
  local entries = redis.call('HGETALL', KEYS[2])
  for i = 1, #entries, 2 do
    if not holder_alive(entries[i], ARGV[4]) then
      redis.call('HDEL', KEYS[2], entries[i])
      redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_usd', -tonumber(entries[i + 1]))
    end
  end
  refused, reserved = over()
  if refused then
    if reserved > 1e-12 then
      return 0
    end
    return -1
  end
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_usd', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3], ARGV[1])
return 1

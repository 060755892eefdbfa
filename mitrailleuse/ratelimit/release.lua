-- Give back a request's in-flight lease, and correct its tokens from the provider's usage.
-- KEYS: 1 token TAT, 2 in-flight leases, 3 rate counters
-- ARGV: 1 lease id, 2 tokens/min (0 = none), 3 actual minus estimated tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
local tpm, delta = tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and delta ~= 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > 0 then
    tat = math.max(tat + delta * 60000 / tpm, now)
    redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 60000)
  end
  redis.call('HINCRBY', KEYS[3], 't' .. math.floor(now / 1000), delta)
end
return 1

-- Pause a provider's whole fleet for ARGV[1] ms (a 429's Retry-After), never shortening a pause.
-- KEYS: 1 pause-until. Returns the pause's end, in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
  return until_ms
end
return current

-- Spread what the provider says remains over its reset window: when `remaining` requests at our
-- own pace would run out before `reset`, the next request waits reset / remaining. Later
-- responses carry fresh headers, so the pace keeps following the provider's word.
-- GCRA admits a request once its theoretical arrival time (TAT) is due.
-- KEYS: 1 request TAT. ARGV: 1 remaining, 2 reset ms, 3 our interval ms. Returns 1 if slowed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local remaining, reset, interval = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if remaining * interval >= reset then
  return 0
end
local target = now + reset / math.max(remaining, 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if target > tat then
  redis.call('SET', KEYS[1], target, 'PX', math.ceil(target - now) + 60000)
  return 1
end
return 0

-- Lower a request budget to what the provider says remains: at most ARGV[1] requests may go
-- at once, however much burst our own budget still holds (a config set too high, or another
-- client on the same account). GCRA admits while tat + interval - burst <= now, so `remaining`
-- requests fit when tat = now + burst - remaining * interval.
-- KEYS: 1 request TAT. ARGV: 1 remaining, 2 our interval ms, 3 burst ms. Returns 1 if lowered.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local remaining, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local capacity = math.floor((now + burst - tat) / interval)
if remaining >= capacity then
  return 0
end
local target = now + burst - remaining * interval
redis.call('SET', KEYS[1], target, 'PX', math.ceil(target - now) + 60000)
return 1

-- Take one request (and its estimated tokens) from a provider's fleet-wide budget, atomically.
-- KEYS: 1 request TAT, 2 token TAT, 3 in-flight leases (zset), 4 pause-until,
--       5 this minute's rate counters (hash: r<second>, t<second>)
-- ARGV: 1 requests/min, 2 tokens/min (0 = none), 3 tokens, 4 max in flight, 5 lease id,
--       6 lease ttl ms, 7 burst ms (at least one interval: one request may always go)
-- Returns {1, 0} when granted, or {0, ms to wait}.
-- GCRA (generic cell rate algorithm): a theoretical arrival time per budget, stored in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_in_flight, lease_ttl, burst = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])

local paused_until = tonumber(redis.call('GET', KEYS[4]) or '0')
if paused_until > now then
  return {0, paused_until - now}
end

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= max_in_flight then
  return {0, 25}
end

local interval = 60000 / rpm
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = tat + interval - burst - now
if wait > 0 then
  return {0, math.ceil(wait)}
end

local token_tat = now
if tpm > 0 then
  local per_token = 60000 / tpm
  token_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local cost = tokens * per_token
  local token_wait = token_tat + cost - math.max(burst, cost) - now
  if token_wait > 0 then
    return {0, math.ceil(token_wait)}
  end
  token_tat = token_tat + cost
  redis.call('SET', KEYS[2], token_tat, 'PX', math.ceil(token_tat - now) + 60000)
end

redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 60000)
redis.call('ZADD', KEYS[3], now + lease_ttl, ARGV[5])
redis.call('PEXPIRE', KEYS[3], lease_ttl + 60000)
local second = math.floor(now / 1000)
redis.call('HINCRBY', KEYS[5], 'r' .. second, 1)
redis.call('HINCRBY', KEYS[5], 't' .. second, tokens)
redis.call('PEXPIRE', KEYS[5], 180000)
return {1, 0}

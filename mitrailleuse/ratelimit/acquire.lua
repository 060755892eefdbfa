-- Take one request (and its estimated tokens) from a provider's fleet-wide budget, atomically,
-- together with the claims on the items the call is for (prepended: pipeline/held.lua).
-- KEYS: 1 request TAT, 2 token TAT, 3 in-flight leases (zset), 4 pause-until,
--       5 this minute's rate counters (hash: r<second>, t<second>);
--       with claims: 6 the run hash, 7 the chunk's records (hash), 8 the chunks-done bitmap,
--       then each item's claim, then (with the response cache) each item's cache claim and
--       cache entry
-- ARGV: 1 requests/min, 2 tokens/min (0 = none), 3 tokens, 4 max in flight, 5 lease id (with
--       claims, their holder: the lease of a dead holder is freed like its claims),
--       6 lease ttl ms (also the claims'), 7 horizon ms (how far ahead a call may book its
--       slot); with claims: 8 chunk number, 9 holder ("<owner> <token>"),
--       10 alive-key prefix, then each item's ordinal
-- Returns {1, ms, state...} granted for the items in state 0 (claimed for this call), to be
--         sent in ms (its booked slot); {0, ms} wait that long first; {4, ms} the same, every
--         in-flight slot taken; {2, 0, state...} nothing to call; {3, 0} cancelled.
-- Item states: 0 claimed here; 1 recorded already; 2 a live call elsewhere has the item;
--              3 a live call elsewhere has an identical request, or its answer is cached now.
-- Nothing is written unless a call is granted: a call held back holds no claim.
-- GCRA (generic cell rate algorithm): a theoretical arrival time (TAT) per budget, stored in
-- ms. A call books the next free slot when it is at most `horizon` away, and is sent then: a
-- slot is never lost to a worker waking up late, and none is ever given twice.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_in_flight, lease_ttl, horizon = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
local claims = #KEYS > 5
local SWEEP_MS = 1000

if claims and redis.call('HGET', KEYS[6], 'cancelled') == '1' then
  return {3, 0}
end

local paused_until = tonumber(redis.call('GET', KEYS[4]) or '0')
if paused_until > now then
  return {0, paused_until - now}
end

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if claims and redis.call('ZCARD', KEYS[3]) >= max_in_flight
    and redis.call('SET', KEYS[3] .. ':swept', 1, 'NX', 'PX', SWEEP_MS) then
  -- a killed worker's calls would hold their slots until their leases expire (the call's
  -- timeout and a margin: minutes, the whole fleet stalled at the cap); a lease is its call's
  -- holder, and one whose owner is dead frees its slot now (once a second at most)
  local alive = {}
  for _, lease in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local owner = string.match(lease, '^(%S+) ')
    if owner then
      if alive[owner] == nil then
        alive[owner] = redis.call('EXISTS', ARGV[10] .. owner) == 1
      end
      if not alive[owner] then
        redis.call('ZREM', KEYS[3], lease)
      end
    end
  end
end
if redis.call('ZCARD', KEYS[3]) >= max_in_flight then
  -- every call slot is taken: a fleet of waiting threads, each looking again every 25 ms,
  -- spent a whole core asking; a fifth of the horizon keeps the slots busy for a tenth of it
  return {4, math.max(25, horizon / 5)}
end

local interval = 60000 / rpm
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local start = tat

local token_tat, cost = now, 0
if tpm > 0 then
  token_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  cost = tokens * 60000 / tpm
  -- a call larger than a slot's worth of tokens goes once the budget has room for it
  start = math.max(start, token_tat + cost - math.max(interval, cost))
end
if start - now > horizon then
  -- the booked slots cover half the horizon: no need to look again sooner
  return {0, math.ceil(math.max(start - now - horizon, horizon / 2))}
end

local reply = {1, math.floor(start - now)}
if claims then
  local part, holder, alive = ARGV[8], ARGV[9], ARGV[10]
  local items = #ARGV - 10
  local cached = #KEYS - 8 > items
  local done = redis.call('GETBIT', KEYS[8], part) == 1
  local any = false
  for i = 1, items do
    local state = 0
    if done or redis.call('HEXISTS', KEYS[7], ARGV[10 + i]) == 1 then
      state = 1
    elseif held_elsewhere(KEYS[8 + i], holder, alive) then
      state = 2
    elseif cached and (held_elsewhere(KEYS[8 + items + 2 * i - 1], holder, alive)
        or redis.call('EXISTS', KEYS[8 + items + 2 * i]) == 1) then
      state = 3
    end
    reply[2 + i] = state
    any = any or state == 0
  end
  if not any then
    reply[1] = 2
    return reply
  end
  for i = 1, items do
    if reply[2 + i] == 0 then
      redis.call('SET', KEYS[8 + i], holder, 'PX', lease_ttl)
      if cached then
        redis.call('SET', KEYS[8 + items + 2 * i - 1], holder, 'PX', lease_ttl)
      end
    end
  end
end

if tpm > 0 then
  token_tat = token_tat + cost
  redis.call('SET', KEYS[2], token_tat, 'PX', math.ceil(token_tat - now) + 60000)
end
redis.call('SET', KEYS[1], start + interval, 'PX', math.ceil(start + interval - now) + 60000)
redis.call('ZADD', KEYS[3], start + lease_ttl, ARGV[5])
redis.call('PEXPIRE', KEYS[3], math.ceil(start - now) + lease_ttl + 60000)
local second = math.floor(start / 1000)
redis.call('HINCRBY', KEYS[5], 'r' .. second, 1)
redis.call('HINCRBY', KEYS[5], 't' .. second, tokens)
redis.call('PEXPIRE', KEYS[5], 180000)
return reply

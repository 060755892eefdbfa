-- Store a call's records, each at most once, count those stored first, end the call's rate
-- lease, free its claims and tell listeners: one round trip per call, records before claims (a
-- copy of the message then finds the records, never a free item). Prepended:
-- ratelimit/lease.lua.
-- KEYS: 1 the chunk's records (hash), 2 the run hash, then with a lease its three keys (token
--       TAT, in-flight leases, rate counters), then the claim keys to free
-- ARGV: 1 the run's events channel, 2 the lease id ('' for none), 3 tokens/min, 4 actual minus
--       estimated tokens, then per record: ordinal, record JSON, outcome ("s" succeeded,
--       "f" failed, "c" succeeded from the cache), cost in USD
-- Returns how many records were stored first.
local done, succeeded, failed, cached, spent = 0, 0, 0, 0, 0
for i = 5, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    local outcome = ARGV[i + 2]
    done = done + 1
    if outcome == 'f' then failed = failed + 1 else succeeded = succeeded + 1 end
    if outcome == 'c' then cached = cached + 1 end
    spent = spent + tonumber(ARGV[i + 3])
  end
end
local claims_from = 3
if ARGV[2] ~= '' then
  end_lease(KEYS[3], KEYS[4], KEYS[5], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
  claims_from = 6
end
if #KEYS >= claims_from then
  redis.call('DEL', unpack(KEYS, claims_from))
end
if done > 0 then
  redis.call('HINCRBY', KEYS[2], 'done', done)
  if succeeded > 0 then redis.call('HINCRBY', KEYS[2], 'succeeded', succeeded) end
  if failed > 0 then redis.call('HINCRBY', KEYS[2], 'failed', failed) end
  if cached > 0 then redis.call('HINCRBY', KEYS[2], 'cached', cached) end
  if spent > 0 then redis.call('HINCRBYFLOAT', KEYS[2], 'spent_usd', tostring(spent)) end
  redis.call('PUBLISH', ARGV[1], 'progress')
end
return done

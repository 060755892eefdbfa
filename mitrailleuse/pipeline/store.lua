-- Store a call's records, each at most once, count those stored first, free the call's claims
-- and tell listeners: one round trip per call, records before claims (a copy of the message
-- then finds the records, never a free item).
-- KEYS: 1 the chunk's records (hash), 2 the run hash, then the claim keys to free
-- ARGV: 1 the run's events channel, then per record: ordinal, record JSON, outcome
--       ("s" succeeded, "f" failed, "c" succeeded from the cache), cost in USD
-- Returns how many records were stored first.
local done, succeeded, failed, cached, spent = 0, 0, 0, 0, 0
for i = 2, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    local outcome = ARGV[i + 2]
    done = done + 1
    if outcome == 'f' then failed = failed + 1 else succeeded = succeeded + 1 end
    if outcome == 'c' then cached = cached + 1 end
    spent = spent + tonumber(ARGV[i + 3])
  end
end
if #KEYS > 2 then
  redis.call('DEL', unpack(KEYS, 3))
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

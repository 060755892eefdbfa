-- Shared by release.lua and pipeline/store.lua (prepended): end a call's in-flight lease, and
-- correct its tokens from the provider's usage.
-- tat_key: token TAT; leases_key: in-flight leases (zset); counters_key: this minute's rate
-- counters; tpm: tokens/min (0 = none); delta: actual minus estimated tokens
local function end_lease(tat_key, leases_key, counters_key, lease_id, tpm, delta)
  redis.call('ZREM', leases_key, lease_id)
  if tpm > 0 and delta ~= 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local tat = tonumber(redis.call('GET', tat_key) or '0')
    if tat > 0 then
      tat = math.max(tat + delta * 60000 / tpm, now)
      redis.call('SET', tat_key, tat, 'PX', math.ceil(tat - now) + 60000)
    end
    redis.call('HINCRBY', counters_key, 't' .. math.floor(now / 1000), delta)
  end
end

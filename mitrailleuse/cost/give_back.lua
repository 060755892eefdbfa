-- Give back a call's reservation, unless it was already given back for a dead holder.
-- KEYS: 1 the run hash, 2 the reservations. ARGV: 1 holder. Returns 1 when given back.
local usd = redis.call('HGET', KEYS[2], ARGV[1])
if not usd then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_usd', -tonumber(usd))
return 1

-- End a lease if ARGV[1] ("<owner> <token>") still holds it. KEYS: 1 the lease.
-- Returns 1 when ended, 0 when another holder has it (ours had expired) or nobody does.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

-- Take an exclusive lease unless a live holder other than ARGV[1] has it.
-- KEYS: 1 the lease. ARGV: 1 holder ("<owner> <token>"), 2 ttl ms, 3 alive-key prefix.
-- Returns 1 when taken (or renewed), 0 when a live holder keeps it.
if held_elsewhere(KEYS[1], ARGV[1], ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1

-- Give back a request's in-flight lease, and correct its tokens from the provider's usage
-- (prepended: ratelimit/lease.lua).
-- KEYS: 1 token TAT, 2 in-flight leases, 3 rate counters
-- ARGV: 1 lease id, 2 tokens/min (0 = none), 3 actual minus estimated tokens
end_lease(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1

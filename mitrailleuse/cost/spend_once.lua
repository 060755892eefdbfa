-- Count money spent once for a marker (a batch's re-asked answers), however often it comes.
-- KEYS: 1 the run hash. ARGV: 1 the marker, 2 the amount in USD. Returns 1 when counted.
if redis.call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then
  return 0
end
redis.call('HINCRBYFLOAT', KEYS[1], 'spent_usd', ARGV[2])
return 1

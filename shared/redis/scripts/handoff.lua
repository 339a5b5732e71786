-- KEYS: queue. ARGV: group, consumer, id, run_id, handoffs. Hand an entry over: add a fresh
-- entry for the run and ack+delete the old one, atomically, only if this consumer holds it.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XADD', KEYS[1], '*', 'run', ARGV[4], 'handoffs', ARGV[5])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return 1
end
return 0

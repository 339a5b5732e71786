-- KEYS: queue. ARGV: group, consumer, id. Ack and delete an entry only if this consumer holds
-- it (a worker that lost it must not ack the new owner's delivery). Returns 1 or 0.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return 1
end
return 0

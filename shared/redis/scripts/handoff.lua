-- KEYS: ready, held, ring, tenant list (one shard's). ARGV: group, consumer, id, run_id,
-- handoffs, user, priority, tenant.
-- Hand an entry over: queue the run again at the head of its tenant's line (as enqueue.lua
-- with front = 1) and ack+delete the old entry, atomically, if this consumer holds it. An
-- entry no consumer holds (Redis lost its delivery, or the entry, or the group) is replaced
-- too: the old id is deleted if it is still there (never delivered), so the run has one
-- entry. One another consumer holds is left alone. Returns 1 when a fresh entry was added.
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p['err'] then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  p = {}
end
if #p == 1 and p[1][2] ~= ARGV[2] then return 0 end
local id = redis.call('XADD', KEYS[2], '*', 'run', ARGV[4], 'user', ARGV[6], 'prio', ARGV[7], 'handoffs', ARGV[5])
if redis.call('LPUSH', KEYS[4], id) == 1 then redis.call('LPUSH', KEYS[3], ARGV[8]) end
if #p == 1 then redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) end
redis.call('XDEL', KEYS[1], ARGV[3])
return 1

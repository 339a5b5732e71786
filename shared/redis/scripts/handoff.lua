-- KEYS: queue. ARGV: group, consumer, id, run_id, handoffs.
-- Hand an entry over: add a fresh entry for the run and ack+delete the old one, atomically,
-- if this consumer holds it. An entry no consumer holds (Redis lost its delivery, or the
-- entry, or the group) is replaced too: the old id is deleted if it is still there (never
-- delivered), so the run has one entry. One another consumer holds is left alone.
-- Returns 1 when a fresh entry was added.
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p['err'] then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  p = {}
end
if #p == 1 and p[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'run', ARGV[4], 'handoffs', ARGV[5])
if #p == 1 then redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) end
redis.call('XDEL', KEYS[1], ARGV[3])
return 1

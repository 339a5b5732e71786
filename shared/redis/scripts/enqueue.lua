-- KEYS: held, ring, tenant list (one shard's: one slot). ARGV: run, user, priority, handoffs,
-- front (1: a hand-over, back at the head of its tenant's line), tenant (the user, or one
-- shared name when fairness is off).
-- Queue a run: an entry in the shard's held stream, its id in the tenant's list of this
-- priority, and the tenant in the priority's ring if its list was empty (a tenant is in a
-- ring exactly while its list has ids). Returns the entry id.
local fields = {'run', ARGV[1], 'user', ARGV[2], 'prio', ARGV[3]}
if ARGV[4] ~= '0' then
  fields[#fields + 1] = 'handoffs'
  fields[#fields + 1] = ARGV[4]
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
local n
if ARGV[5] == '1' then n = redis.call('LPUSH', KEYS[3], id) else n = redis.call('RPUSH', KEYS[3], id) end
if n == 1 then
  if ARGV[5] == '1' then redis.call('LPUSH', KEYS[2], ARGV[6]) else redis.call('RPUSH', KEYS[2], ARGV[6]) end
end
return id

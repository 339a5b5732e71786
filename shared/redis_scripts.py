"""The Lua scripts behind `shared.redisio.RedisIO`: every worker write for a run checks the
attempt stored in the run's meta hash first (the fence), atomically with the write.

Each `redis.call` from Lua costs Redis time of its own beyond the command's: the scripts that
run for every run (append, acks) read and write as few times as they can."""

# KEYS: meta, events. ARGV: attempt, first_seq, max_events, max_bytes, ttl, owner, entry,
# meta_ttl, (type, data)... With an `owner`, the attempt's first write also raises its fence
# (as `FENCE` does, with `first_seq - 1` as the known seq) unless a later attempt holds it.
# The meta hash is read once and written once: this script runs for every batch of every run.
# Returns {1, cancel} on success, {-1, attempt} when fenced out, {-2, seq} on a seq conflict,
# {-3, 0} when the per-run cap would be exceeded.
APPEND = """
local m = redis.call('HMGET', KEYS[1], 'attempt', 'seq', 'bytes', 'cancel')
local a = tonumber(ARGV[1])
local first = tonumber(ARGV[2])
local attempt = tonumber(m[1] or '0')
local seq = tonumber(m[2] or '0')
local fencing = attempt < a and ARGV[6] ~= ''
if fencing then
  attempt = a
  if not m[2] then seq = first - 1 end
end
if attempt ~= a then return {-1, attempt} end
if seq ~= first - 1 then return {-2, seq} end
local n = (#ARGV - 8) / 2
local bytes = tonumber(m[3] or '0')
local add = 0
for i = 0, n - 1 do add = add + string.len(ARGV[10 + 2 * i]) end
if seq + n > tonumber(ARGV[3]) or bytes + add > tonumber(ARGV[4]) then return {-3, 0} end
for i = 0, n - 1 do
  redis.call('XADD', KEYS[2], '0-' .. (first + i), 't', ARGV[9 + 2 * i], 'd', ARGV[10 + 2 * i])
end
if fencing then
  redis.call('HSET', KEYS[1], 'seq', seq + n, 'bytes', bytes + add,
             'attempt', a, 'owner', ARGV[6], 'entry', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'seq', seq + n, 'bytes', bytes + add)
end
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
elseif fencing then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
end
return {1, tonumber(m[4] or '0')}
"""

# KEYS: meta. ARGV: attempt, owner, known_seq, ttl, entry id. Raises the fence to `attempt` unless a
# later attempt holds it already. When the meta hash is gone (new run, or Redis lost it),
# seeds `seq` from Postgres' archived seq. Returns {1, seq, cancel} or {-1, attempt}.
FENCE = """
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if attempt >= tonumber(ARGV[1]) then return {-1, attempt} end
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq then
  seq = ARGV[3]
  redis.call('HSET', KEYS[1], 'seq', seq, 'bytes', 0)
end
redis.call('HSET', KEYS[1], 'attempt', ARGV[1], 'owner', ARGV[2], 'entry', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {1, tonumber(seq), tonumber(redis.call('HGET', KEYS[1], 'cancel') or '0')}
"""

# KEYS: queue. ARGV: group, consumer, id... For each entry still pending for this consumer,
# reset its idle time (XCLAIM ... JUSTID, which does not count a delivery). Returns the ids
# this consumer no longer owns: their runs must stop now.
RENEW = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# KEYS: queue. ARGV: group, consumer, id. Ack and delete an entry only if this consumer holds
# it (a worker that lost it must not ack the new owner's delivery). Returns 1 or 0.
ACK = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: queue. ARGV: group, consumer, id... `ACK` for many entries (a worker's batch of acks in
# one call): one XPENDING lists what this consumer holds, then one XACK and one XDEL take the
# ids it still holds. Returns 1 or 0 per id, in order.
ACK_MANY = """
local held = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000, ARGV[2])) do
  held[p[1]] = true
end
local out, ids = {}, {}
for i = 3, #ARGV do
  if held[ARGV[i]] then
    ids[#ids + 1] = ARGV[i]
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return out
"""

# KEYS: queue. ARGV: group, consumer, id, run_id, handoffs. Hand an entry over: add a fresh
# entry for the run and ack+delete the old one, atomically, only if this consumer holds it.
HANDOFF = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XADD', KEYS[1], '*', 'run', ARGV[4], 'handoffs', ARGV[5])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: meta. ARGV: ttl. Sets the cancel flag (kept as long as the run's keys).
CANCEL = """
redis.call('HSET', KEYS[1], 'cancel', 1)
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return 1
"""

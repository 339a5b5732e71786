"""The Lua scripts behind `shared.redisio.RedisIO`: every worker write for a run checks the
attempt stored in the run's meta hash first (the fence), atomically with the write.

Each `redis.call` from Lua costs Redis time of its own beyond the command's: the scripts that
run for every run (append, acks) read and write as few times as they can."""

# Copy events Postgres has committed into the run's Redis stream, for fan-out.
# KEYS: meta, events.
# ARGV: attempt (0: a writer with no attempt, e.g. the API ending a queued run), first_seq,
#       ttl (> 0: start the run's expiry), owner, entry, meta_ttl, terminal ('1': the last
#       event is the run's terminal one), then (type, data) per event.
# Redis is a cache of the archive: it may have lost events (a restart, a failover) or missed
# an append (an outage). So events it already has are skipped (a retry, or a newer writer
# got there first: Postgres committed each seq once, the bytes are the same), a hole before
# the first new event is allowed (readers fill it from the archive), and a missing meta hash
# is re-created. It refuses a writer older than the attempt it knows ({-1, attempt}: that
# writer lost its lease) and anything after the run's terminal event ({-4, terminal seq}).
# Returns {1, cancel flag} once the events are in.
APPEND = """
local m = redis.call('HMGET', KEYS[1], 'attempt', 'seq', 'closed', 'cancel')
local a = tonumber(ARGV[1])
local first = tonumber(ARGV[2])
local known = tonumber(m[1] or '0')
if a > 0 and known > a then return {-1, known} end
if m[3] and first > tonumber(m[3]) then return {-4, tonumber(m[3])} end
local seq = tonumber(m[2] or '-1')
if seq < 0 then
  -- No meta hash: the stream's own last id says what it holds.
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  seq = 0
  if #top == 1 then seq = tonumber(string.match(top[1][1], '%-(%d+)$')) end
end
local n = (#ARGV - 7) / 2
local last = first + n - 1
for i = 0, n - 1 do
  if first + i > seq then
    redis.call('XADD', KEYS[2], '0-' .. (first + i), 't', ARGV[8 + 2 * i], 'd', ARGV[9 + 2 * i])
  end
end
local fields = {}
if last > seq or not m[2] then
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = math.max(last, seq)
end
if a > known then
  fields[#fields + 1] = 'attempt'
  fields[#fields + 1] = a
  fields[#fields + 1] = 'owner'
  fields[#fields + 1] = ARGV[4]
  fields[#fields + 1] = 'entry'
  fields[#fields + 1] = ARGV[5]
end
if ARGV[7] == '1' then
  fields[#fields + 1] = 'closed'
  fields[#fields + 1] = last
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
elseif a > known or not m[2] then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
end
return {1, tonumber(m[4] or '0')}
"""

# KEYS: meta, events. ARGV: attempt, owner, ttl, entry id. Raises the fence to `attempt`
# unless a later attempt holds it already, so an older attempt's appends are refused from now
# on. Returns {1, seq, cancel}, `seq` being the last event Redis holds for the run (from the
# meta hash, or the stream when Redis lost the hash: the attempt copies what Redis lacks from
# the archive), or {-1, attempt}.
FENCE = """
local m = redis.call('HMGET', KEYS[1], 'attempt', 'seq', 'cancel')
local attempt = tonumber(m[1] or '0')
if attempt >= tonumber(ARGV[1]) then return {-1, attempt} end
local seq = tonumber(m[2] or '-1')
if seq < 0 then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  seq = 0
  if #top == 1 then seq = tonumber(string.match(top[1][1], '%-(%d+)$')) end
end
redis.call('HSET', KEYS[1], 'attempt', ARGV[1], 'owner', ARGV[2], 'entry', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, seq, tonumber(m[3] or '0')}
"""

# KEYS: queue. ARGV: group, consumer, id... For each entry still pending for this consumer,
# reset its idle time (XCLAIM ... JUSTID, which does not count a delivery). Returns two lists:
# the ids another consumer holds now (their runs must stop: the lease moved), and the ids no
# one holds (Redis lost them, or the group: the run must be handed over at once, as nothing
# would ever re-claim it).
RENEW = """
local lost, gone = {}, {}
for i = 3, #ARGV do
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p['err'] then
    table.insert(gone, ARGV[i])
  elseif #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif #p == 1 then
    table.insert(lost, ARGV[i])
  else
    table.insert(gone, ARGV[i])
  end
end
return {lost, gone}
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
# An entry no consumer holds (Redis lost its delivery, or the entry) is replaced too: the old
# id is deleted if it is still there (never delivered), so the run has one entry. One another
# consumer holds is left alone. Returns 1 when a fresh entry was added.
HANDOFF = """
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
"""

# KEYS: meta. ARGV: ttl. Sets the cancel flag (kept as long as the run's keys).
CANCEL = """
redis.call('HSET', KEYS[1], 'cancel', 1)
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return 1
"""

# KEYS: lock. ARGV: owner. Release a lock only if this owner still holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

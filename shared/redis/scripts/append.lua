-- Copy events Postgres has committed into the run's Redis stream, for fan-out.
-- KEYS: meta, events, and (optional) the run's sharded pub/sub channel.
-- ARGV: attempt (0: a writer with no attempt, e.g. the API ending a queued run), first_seq,
--       ttl (> 0: start the run's expiry), owner, entry, meta_ttl, terminal ('1': the last
--       event is the run's terminal one), gaps ('1': a hole before the first event is
--       allowed), then (type, data) per event.
-- Redis is a cache of the archive: it may have lost events (a restart, a failover) or missed
-- an append (an outage). So events it already has are skipped (a retry, or a newer writer
-- got there first: Postgres committed each seq once, the bytes are the same), and a missing
-- meta hash is re-created (from the stream's last id). A hole before the first new event is
-- refused ({-2, seq}: the writer sends what Redis lacks from the archive first) unless
-- `gaps`. It refuses a writer older than the attempt it knows ({-1, attempt}: that writer
-- lost its lease) and anything after the run's terminal event ({-4, terminal seq}).
-- Returns {1, cancel flag} once the events are in.
-- With the channel, the events added (not those skipped) are announced there by SPUBLISH, the
-- API hubs' wake-up (`shared.redis.hub`): "first last closed", then, when their data is at most
-- INLINE bytes, each event as type, data length and data, all '\n'-separated. The channel carries
-- the run's hash tag: on a cluster it is in this script's slot.
local INLINE = 16384
local m = redis.call('HMGET', KEYS[1], 'attempt', 'seq', 'closed', 'cancel')
local a = tonumber(ARGV[1])
local first = tonumber(ARGV[2])
local known = tonumber(m[1] or '0')
if a > 0 and known > a then return {-1, known} end
if m[3] and first > tonumber(m[3]) then return {-4, tonumber(m[3])} end
local seq = tonumber(m[2] or '-1')
if seq < 0 then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  seq = 0
  if #top == 1 then seq = tonumber(string.match(top[1][1], '%-(%d+)$')) end
end
if seq < first - 1 and ARGV[8] ~= '1' then return {-2, seq} end
local n = (#ARGV - 8) / 2
local last = first + n - 1
local added, size = 0, 0
for i = 0, n - 1 do
  if first + i > seq then
    redis.call('XADD', KEYS[2], '0-' .. (first + i), 't', ARGV[9 + 2 * i], 'd', ARGV[10 + 2 * i])
    added = added + 1
    size = size + #ARGV[10 + 2 * i]
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
if KEYS[3] and added > 0 then
  local from = last - added + 1
  local notice = {from .. ' ' .. last .. ' ' .. (ARGV[7] == '1' and '1' or '0')}
  if size <= INLINE then
    for i = from - first, n - 1 do
      notice[#notice + 1] = ARGV[9 + 2 * i]
      notice[#notice + 1] = #ARGV[10 + 2 * i]
      notice[#notice + 1] = ARGV[10 + 2 * i]
    end
  end
  redis.call('SPUBLISH', KEYS[3], table.concat(notice, '\n'))
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
elseif a > known or not m[2] then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
end
return {1, tonumber(m[4] or '0')}

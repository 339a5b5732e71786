-- KEYS: meta, events. ARGV: attempt, first_seq, max_events, max_bytes, ttl, owner, entry,
-- meta_ttl, (type, data)... With an `owner`, the attempt's first write also raises its fence
-- (as fence.lua does, with `first_seq - 1` as the known seq) unless a later attempt holds it.
-- The meta hash is read once and written once: this script runs for every batch of every run.
-- Returns {1, cancel} on success, {-1, attempt} when fenced out, {-2, seq} on a seq conflict,
-- {-3, 0} when the per-run cap would be exceeded.
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

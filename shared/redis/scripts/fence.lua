-- KEYS: meta, events. ARGV: attempt, owner, ttl, entry id.
-- Raises the run's fence to `attempt` unless a later attempt holds it already, so an older
-- attempt's copies are refused from now on. Returns {1, seq, cancel}, `seq` being the last
-- event Redis holds for the run (from the meta hash, or the stream when Redis lost the hash:
-- the attempt copies what Redis lacks from the archive), or {-1, attempt}.
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

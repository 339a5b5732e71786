-- KEYS: meta, events. ARGV: attempt, owner, ttl, entry id.
-- Raises the run's fence to `attempt` unless a later attempt holds it already, so an older
-- attempt's copies are refused from now on. Returns {1, seq, cancel}, `seq` being the last
-- event Redis is known to hold for the run (0 when Redis lost the run's meta hash: the
-- attempt then copies the run's last events from the archive, and the append script skips
-- whatever the stream still has), or {-1, attempt}.
local m = redis.call('HMGET', KEYS[1], 'attempt', 'seq', 'cancel')
local attempt = tonumber(m[1] or '0')
if attempt >= tonumber(ARGV[1]) then return {-1, attempt} end
redis.call('HSET', KEYS[1], 'attempt', ARGV[1], 'owner', ARGV[2], 'entry', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, tonumber(m[2] or '0'), tonumber(m[3] or '0')}

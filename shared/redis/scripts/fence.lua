-- KEYS: meta. ARGV: attempt, owner, known_seq, ttl, entry id. Raises the fence to `attempt` unless a
-- later attempt holds it already. When the meta hash is gone (new run, or Redis lost it),
-- seeds `seq` from Postgres' archived seq. Returns {1, seq, cancel} or {-1, attempt}.
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

-- KEYS: meta. ARGV: ttl. Sets the cancel flag (kept as long as the run's keys).
redis.call('HSET', KEYS[1], 'cancel', 1)
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return 1

-- KEYS: a breaker's state hash. ARGV: expected version, status, epoch, opened_at, probe_at, ttl.
-- Compare-and-set: writes the new state (and bumps `v`) only if the stored version is the
-- expected one. Returns 1 if written, 0 if another writer got there first.
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'status', ARGV[2], 'epoch', ARGV[3],
           'opened_at', ARGV[4], 'probe_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1

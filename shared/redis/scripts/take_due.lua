-- KEYS: the delayed set, its entries' fields (hash). ARGV: now (unix ms), limit. Removes the runs
-- due by `now` (at most `limit`, the earliest first) from both, atomically: each run is taken
-- by exactly one caller, which enqueues it. Reply: run id, due (unix ms), fields (JSON or
-- false), per run.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
local out = {}
for i = 1, #due, 2 do
  local run = due[i]
  redis.call('ZREM', KEYS[1], run)
  out[#out + 1] = run
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], run)
  redis.call('HDEL', KEYS[2], run)
end
return out

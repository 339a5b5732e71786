-- KEYS: the delayed set, its entries' fields (hash). ARGV: only_new (1: ZADD NX, keep a member's
-- time), then per run: run id, due (unix ms), entry fields (JSON). Puts each run in the set and
-- its fields in the hash, both or neither. Reply: how many runs were added (new members).
local added = 0
local nx = ARGV[1] == '1'
for i = 2, #ARGV, 3 do
  local n
  if nx then
    n = redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
  else
    n = redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
  if n == 1 or not nx then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
  added = added + n
end
return added

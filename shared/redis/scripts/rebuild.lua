-- KEYS: held, ring high, ring normal, ring low (one shard's). ARGV: tenant list prefix, fair
-- (1: a tenant per user, 0: one shared tenant `ARGV[3]`), shared tenant name.
-- The reconciler's check of a shard's line: when the ids in the tenants' lists do not add up
-- to the held stream's length (a bug, or a partial loss), rebuild every ring and list from the
-- held stream, oldest first. Returns -1 when nothing was wrong, else the ids re-listed.
local levels = {'high', 'normal', 'low'}
local prefix = ARGV[1]
local listed = 0
for i = 1, 3 do
  for _, tenant in ipairs(redis.call('LRANGE', KEYS[i + 1], 0, -1)) do
    listed = listed + redis.call('LLEN', prefix .. levels[i] .. ':' .. tenant)
  end
end
if listed == redis.call('XLEN', KEYS[1]) then return -1 end
for i = 1, 3 do
  for _, tenant in ipairs(redis.call('LRANGE', KEYS[i + 1], 0, -1)) do
    redis.call('DEL', prefix .. levels[i] .. ':' .. tenant)
  end
  redis.call('DEL', KEYS[i + 1])
end
local seen, n, start = {}, 0, '-'
while true do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  for _, e in ipairs(page) do
    local f = {}
    for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
    local level = 2
    for i = 1, 3 do if f['prio'] == levels[i] then level = i end end
    local tenant = ARGV[3]
    if ARGV[2] == '1' and f['user'] and f['user'] ~= '' then tenant = f['user'] end
    local list = prefix .. levels[level] .. ':' .. tenant
    if not seen[list] then
      seen[list] = true
      redis.call('DEL', list)
    end
    if redis.call('RPUSH', list, e[1]) == 1 then redis.call('RPUSH', KEYS[level + 1], tenant) end
    n = n + 1
  end
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end
return n

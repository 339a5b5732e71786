-- KEYS: ready, held, skips, ring high, ring normal, ring low (one shard's: one slot).
-- ARGV: group, consumer, count, starvation, tenant list prefix (keys.py `tenant_list_prefix`).
-- A worker with `count` free slots takes up to `count` entries of the shard, atomically:
-- first any entry of the ready stream never delivered (XREADGROUP >), then it promotes what
-- is missing from the held stream, one at a time, and reads those. Each promotion picks a
-- priority level: the highest one that waited `starvation` higher picks in a row, else the
-- highest with held runs; within the level, the tenant at the head of its ring (round-robin:
-- it goes back to the tail while it has more), and that tenant's oldest id. The entry moves
-- held -> ready with its fields (XRANGE, XDEL, XADD); an id whose entry is gone is skipped.
-- Returns {entries (as XREADGROUP gives them), server time in ms}.
local ready, held, skips = KEYS[1], KEYS[2], KEYS[3]
local rings = {KEYS[4], KEYS[5], KEYS[6]}
local levels = {'high', 'normal', 'low'}
local group, consumer = ARGV[1], ARGV[2]
local count, starvation, prefix = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {}
local function read(n)
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', ready, '>')
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = e end
  end
end
read(count)
local want, promoted, tries = count - #out, 0, 0
while promoted < want and tries < want * 4 + 16 do
  tries = tries + 1
  local waiting, level = {}, nil
  for i = 1, 3 do waiting[i] = redis.call('LLEN', rings[i]) > 0 end
  for i = 2, 3 do
    if waiting[i] and not level and tonumber(redis.call('HGET', skips, levels[i]) or '0') >= starvation then
      level = i
    end
  end
  if not level then
    for i = 1, 3 do
      if waiting[i] and not level then level = i end
    end
  end
  if not level then break end
  local tenant = redis.call('LPOP', rings[level])
  local list = prefix .. levels[level] .. ':' .. tenant
  local id = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', rings[level], tenant) end
  if id then
    local e = redis.call('XRANGE', held, id, id)
    if #e == 1 then
      redis.call('XDEL', held, id)
      redis.call('XADD', ready, '*', unpack(e[1][2]))
      promoted = promoted + 1
      redis.call('HDEL', skips, levels[level])
      for j = level + 1, 3 do
        if waiting[j] then redis.call('HINCRBY', skips, levels[j], 1) else redis.call('HDEL', skips, levels[j]) end
      end
    end
  end
end
if promoted > 0 then read(promoted) end
local t = redis.call('TIME')
return {out, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}

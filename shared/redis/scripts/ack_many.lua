-- KEYS: queue. ARGV: group, consumer, id... ack.lua for many entries (a worker's batch of acks in
-- one call): one XPENDING lists what this consumer holds, then one XACK and one XDEL take the
-- ids it still holds. Returns 1 or 0 per id, in order.
local held = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000, ARGV[2])) do
  held[p[1]] = true
end
local out, ids = {}, {}
for i = 3, #ARGV do
  if held[ARGV[i]] then
    ids[#ids + 1] = ARGV[i]
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return out

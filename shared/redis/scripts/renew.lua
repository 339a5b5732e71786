-- KEYS: queue. ARGV: group, consumer, id... For each entry still pending for this consumer,
-- reset its idle time (XCLAIM ... JUSTID, which does not count a delivery). Returns the ids
-- this consumer no longer owns: their runs must stop now.
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost

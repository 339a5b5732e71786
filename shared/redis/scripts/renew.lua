-- KEYS: queue. ARGV: group, consumer, id...
-- For each entry still pending for this consumer, reset its idle time (XCLAIM ... JUSTID,
-- which does not count a delivery). Returns two lists: the ids another consumer holds now
-- (their runs must stop: the lease moved), and the ids no one holds (Redis lost them, or the
-- group: the run must be handed over at once, as nothing would ever re-claim it).
local lost, gone = {}, {}
for i = 3, #ARGV do
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p['err'] then
    table.insert(gone, ARGV[i])
  elseif #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif #p == 1 then
    table.insert(lost, ARGV[i])
  else
    table.insert(gone, ARGV[i])
  end
end
return {lost, gone}

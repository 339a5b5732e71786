-- KEYS: bucket hash. ARGV: rate (tokens/s), burst, [wanted, default 1]. Takes as many of the
-- wanted tokens as there are (a negative `wanted` puts tokens back: a refused submit's).
-- Returns {tokens taken, seconds until the next token is there}.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = math.min(wanted, math.floor(tokens))
tokens = tokens - allowed
local wait = 0
if allowed < wanted then
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}

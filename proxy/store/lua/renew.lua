-- Renew the holds of one account's requests still in flight on this instance, so that a live
-- request's hold is never swept however long it lasts (a client may stall a stream for long).
-- Only entries that still exist are renewed (XX): a request settled meanwhile stays settled.
--
-- KEYS[1] holds   KEYS[2] hold expiries   KEYS[3] tokens held
-- KEYS[4..] the in-flight sets of the keys the requests came with
-- ARGV[1] hold ttl ms   ARGV[2] now in ms, for tests only ('' = Redis TIME)
-- ARGV[3..] pairs: request id, index in KEYS of its key's in-flight set
--
-- Answers the number of holds renewed.

local now = now_ms(ARGV[2])
local ttl = tonumber(ARGV[1])
local until_ms = now + ttl
local renewed = 0
for i = 3, #ARGV, 2 do
  local rid = ARGV[i]
  renewed = renewed + redis.call('ZADD', KEYS[2], 'XX', 'CH', until_ms, rid)
  redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], 'XX', until_ms, rid)
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
return renewed

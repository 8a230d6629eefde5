-- Settle one request: charge what it really used to the month and release its hold.
-- Idempotent by request id: a second settle of the same id charges nothing.
--
-- KEYS[1] month usage hash   KEYS[2] holds   KEYS[3] hold expiries   KEYS[4] tokens held
-- KEYS[5] settled request ids (zset, id -> ms)
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] request id
-- ARGV[3] prompt tokens   ARGV[4] completion tokens   ARGV[5] public model   ARGV[6] key id
-- ARGV[7] '1' to count a request   ARGV[8] usage ttl s   ARGV[9] settled-id memory ms
-- ARGV[10] now in ms, for tests only ('' = Redis TIME)
--
-- Answers {'ok', used} | {'dup', used} | {'month', month}

local now = now_ms(ARGV[10])
local month = month_of(now)
if month ~= ARGV[1] then return {'month', month} end

local rid = ARGV[2]
if redis.call('ZSCORE', KEYS[5], rid) then
  return {'dup', tonumber(redis.call('HGET', KEYS[1], 'used') or '0')}
end

local amount = redis.call('HGET', KEYS[2], rid)
if amount then
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  if redis.call('DECRBY', KEYS[4], amount) < 0 then redis.call('SET', KEYS[4], 0) end
end

local tokens = tonumber(ARGV[3]) + tonumber(ARGV[4])
local used = redis.call('HINCRBY', KEYS[1], 'used', tokens)
redis.call('HINCRBY', KEYS[1], 'prompt', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 'completion', tonumber(ARGV[4]))
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'requests', 1) end
redis.call('HINCRBY', KEYS[1], 'm:' .. ARGV[5], tokens)
redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[6], tokens)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))

local memory = tonumber(ARGV[9])
redis.call('ZADD', KEYS[5], now, rid)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - memory)
redis.call('PEXPIRE', KEYS[5], memory)
return {'ok', used}

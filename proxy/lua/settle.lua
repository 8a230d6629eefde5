-- Settle one request: charge what it really used to the month and release its hold.
-- Idempotent by request id: only a request that still has its hold is charged, so a second
-- settle of the same id charges nothing. A hold outlives any request (its ttl, an hour by
-- default); one that expired belonged to an instance that died, and is not charged.
--
-- KEYS[1] month usage hash   KEYS[2] holds   KEYS[3] hold expiries   KEYS[4] tokens held
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] request id
-- ARGV[3] prompt tokens   ARGV[4] completion tokens   ARGV[5] public model   ARGV[6] key id
-- ARGV[7] '1' to count a request   ARGV[8] usage ttl s
-- ARGV[9] now in ms, for tests only ('' = Redis TIME)
--
-- Answers {'ok', used} | {'gone', used} (settled already, or expired) | {'month', month}

local month = month_of(now_ms(ARGV[9]))
if month ~= ARGV[1] then return {'month', month} end

local rid = ARGV[2]
local amount = redis.call('HGET', KEYS[2], rid)
if not amount then
  return {'gone', tonumber(redis.call('HGET', KEYS[1], 'used') or '0')}
end
redis.call('HDEL', KEYS[2], rid)
redis.call('ZREM', KEYS[3], rid)
if tonumber(amount) > 0 and redis.call('DECRBY', KEYS[4], amount) < 0 then
  redis.call('SET', KEYS[4], 0)
end

local prompt, completion = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = prompt + completion
local used = redis.call('HINCRBY', KEYS[1], 'used', tokens)
redis.call('HINCRBY', KEYS[1], 'prompt', prompt)
redis.call('HINCRBY', KEYS[1], 'completion', completion)
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'requests', 1) end
redis.call('HINCRBY', KEYS[1], 'm:' .. ARGV[5], tokens)
redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[6], tokens)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return {'ok', used}

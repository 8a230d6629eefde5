-- Settle one request: charge what it used to the month, release its hold, take it out of
-- its key's requests in flight.
--
-- What is charged is bounded twice: by the request's hold (what it was allowed to cost) and
-- by what remains of the limit it was admitted under, so `used` never passes the limit. A
-- provider that reports more is recorded apart ('excess'), not charged to the user.
-- Idempotent by request id, with nothing kept per settled request: a request is settled once
-- its hold is gone. The first try of a settle charges even when the hold is gone (a live
-- hold is renewed, so that happens only when renewals failed for a whole ttl, in a long
-- store outage): the caller passes what the hold was. A retry (its first try's reply was
-- lost, and that try may have run) charges only a request that still has its hold.
--
-- KEYS[1] month usage hash   KEYS[2] holds   KEYS[3] hold expiries   KEYS[4] tokens held
-- KEYS[5] the key's requests in flight
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] request id
-- ARGV[3] prompt tokens   ARGV[4] completion tokens   ARGV[5] public model   ARGV[6] key id
-- ARGV[7] '1' to count a request   ARGV[8] usage ttl s
-- ARGV[9] now in ms, for tests only ('' = Redis TIME)
-- ARGV[10] the request's hold (-1: unlimited account)   ARGV[11] its limit (-1: unlimited)
-- ARGV[12] '1' on a settle's first try, '0' on a retry
--
-- Answers {'ok', used, charged} | {'gone', used, 0} (a retry, settled already) | {'month', month}

local now = now_ms(ARGV[9])
local month = month_of(now)
if month ~= ARGV[1] then return {'month', month} end

local rid = ARGV[2]
local amount = redis.call('HGET', KEYS[2], rid)
if amount then
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  if tonumber(amount) > 0 and redis.call('DECRBY', KEYS[4], amount) < 0 then
    redis.call('SET', KEYS[4], 0)
  end
  redis.call('ZREM', KEYS[5], rid)
elseif ARGV[12] ~= '1' then
  return {'gone', tonumber(redis.call('HGET', KEYS[1], 'used') or '0'), 0}
else
  redis.call('ZREM', KEYS[5], rid)
end

local prompt, completion = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = prompt + completion
local charge = tokens
local hold, limit = tonumber(ARGV[10]), tonumber(ARGV[11])
if hold >= 0 and charge > hold then charge = hold end
if limit >= 0 then
  local room = limit - tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
  if room < 0 then room = 0 end
  if charge > room then charge = room end
end
-- The prompt is charged first: it was spent whatever the answer was.
if prompt > charge then prompt = charge end
completion = charge - prompt

local used = redis.call('HINCRBY', KEYS[1], 'used', charge)
redis.call('HINCRBY', KEYS[1], 'prompt', prompt)
redis.call('HINCRBY', KEYS[1], 'completion', completion)
if tokens > charge then redis.call('HINCRBY', KEYS[1], 'excess', tokens - charge) end
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'requests', 1) end
if charge > 0 then
  redis.call('HINCRBY', KEYS[1], 'm:' .. ARGV[5], charge)
  redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[6], charge)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return {'ok', used, charge}

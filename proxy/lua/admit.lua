-- Admit one request for one API key, atomically: key and account state, the key's
-- sliding-window rate limit, and a hold on the account's monthly token quota.
--
-- KEYS[1] account hash     KEYS[2] key hash          KEYS[3] rate log (zset, ms -> request id)
-- KEYS[4] month usage hash KEYS[5] holds (hash, request id -> tokens)
-- KEYS[6] hold expiries (zset, request id -> ms)     KEYS[7] tokens held (counter)
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] request id   ARGV[3] tokens to hold
-- ARGV[4] hold ttl ms   ARGV[5] consume: '1' counts the request and holds, '0' checks only
-- ARGV[6] now in ms, for tests only ('' = Redis TIME)
-- ARGV[7..] tiers, three values each: name, monthly token limit ('' = unlimited), requests/min
--
-- Answers {code, ...}:
--   {'ok', rpm, remaining, reset_ms, limit (-1 unlimited), used, held}
--   {'month', month}           the caller's month is wrong; call again with this one
--   {'unknown'} {'revoked'} {'disabled'} {'nodev'}
--   {'duplicate'}              this request id is already admitted and not settled
--   {'rate', rpm, 0, retry_ms}  {'quota', limit, used, held}
local WINDOW = 60000

local now = now_ms(ARGV[6])
local month = month_of(now)
if month ~= ARGV[1] then return {'month', month} end

if redis.call('EXISTS', KEYS[2]) == 0 then return {'unknown'} end
local key = redis.call('HMGET', KEYS[2], 'revoked', 'last_used_at')
if key[1] == '1' then return {'revoked'} end

local acct = redis.call('HMGET', KEYS[1], 'tier', 'developer', 'disabled',
  'monthly_token_limit', 'requests_per_minute')
if not acct[1] then return {'unknown'} end
if acct[3] == '1' then return {'disabled'} end
if acct[2] ~= '1' then return {'nodev'} end

local tier_limit, tier_rpm = '', '60'
for i = 7, #ARGV, 3 do
  if ARGV[i] == acct[1] then tier_limit, tier_rpm = ARGV[i + 1], ARGV[i + 2] end
end
local limit = acct[4]
if not limit or limit == '' then limit = tier_limit end
local rpm = tonumber((acct[5] and acct[5] ~= '') and acct[5] or tier_rpm)

-- Rate limit: an exact sliding window, at most rpm requests in any 60 s.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - WINDOW)
local count = redis.call('ZCARD', KEYS[3])
local consume = ARGV[5] == '1'
if consume and count >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local retry = WINDOW
  if oldest[2] then retry = tonumber(oldest[2]) + WINDOW - now end
  return {'rate', rpm, 0, math.max(retry, 1)}
end

-- Quota: release the holds of crashed instances, then used + held + this <= limit.
local stale = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 100)
for _, rid in ipairs(stale) do
  local amount = tonumber(redis.call('HGET', KEYS[5], rid) or '0')
  redis.call('HDEL', KEYS[5], rid)
  redis.call('ZREM', KEYS[6], rid)
  if amount > 0 then redis.call('DECRBY', KEYS[7], amount) end
end
local used = tonumber(redis.call('HGET', KEYS[4], 'used') or '0')
local held = tonumber(redis.call('GET', KEYS[7]) or '0')
if held < 0 then held = 0 end
local want = tonumber(ARGV[3])
if limit ~= '' then
  limit = tonumber(limit)
  if consume and used + held + want > limit then return {'quota', limit, used, held} end
else
  limit = -1
end

if consume then
  if redis.call('HEXISTS', KEYS[5], ARGV[2]) == 1 then return {'duplicate'} end
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[3], WINDOW)
  count = count + 1
  -- Every admitted request has a hold until it is settled, so that settling is idempotent
  -- (settle charges only a request that still holds). Unlimited accounts hold no tokens.
  local amount = 0
  if limit >= 0 then amount = want end
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[5], ARGV[2], amount)
  redis.call('ZADD', KEYS[6], now + ttl, ARGV[2])
  if amount > 0 then held = redis.call('INCRBY', KEYS[7], amount) end
  for i = 5, 7 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
  -- last_used_at: a write a minute per key at most, not one per request.
  if now - (tonumber(key[2]) or 0) * 1000 > 60000 then
    redis.call('HSET', KEYS[2], 'last_used_at', math.floor(now / 1000))
  end
end

local reset = 0
if count > 0 then reset = WINDOW end
return {'ok', rpm, rpm - count, reset, limit, used, held}

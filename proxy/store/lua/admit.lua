-- Admit one request for one API key, atomically: key and account state, the key's
-- sliding-window rate limit, its cap on concurrent requests, and a hold on the account's
-- monthly token quota that bounds what the request may cost.
--
-- KEYS[1] account hash     KEYS[2] key hash          KEYS[3] rate log (zset, request id -> ms)
-- KEYS[4] month usage hash KEYS[5] holds (hash, request id -> tokens)
-- KEYS[6] hold expiries (zset, request id -> ms)     KEYS[7] tokens held (counter)
-- KEYS[8] the key's requests in flight (zset, request id -> expiry ms)
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] request id
-- ARGV[3] base tokens: what the request costs whatever it produces (the prompt estimate, and
--         any output billed beyond the cap)   ARGV[4] choices (n)   ARGV[5] cap per choice
-- ARGV[6] hold ttl ms
-- ARGV[7] mode: 'hold' admits a request (all checks, counts it, holds its cost, in flight
--         until settled); 'rate' counts it against the rate limit only (a replayed answer
--         costs no tokens); 'check' checks the key and account, counting nothing
-- ARGV[8] now in ms, for tests only ('' = Redis TIME)
-- ARGV[9..] tiers, four values each: name, monthly token limit ('' = unlimited),
--           requests/min, concurrent requests
--
-- The hold is base + choices * cap. When what remains of the month does not cover it but
-- covers base + choices, the cap is lowered to what remains, so that the last tokens of a
-- month can be spent and `used` ends at the limit, never past it.
--
-- Answers {code, ...}:
--   {'ok', rpm, remaining, reset_ms, limit (-1 unlimited), used, held, cap, hold}
--   {'month', month}           the caller's month is wrong; call again with this one
--   {'unknown'} {'revoked'} {'disabled'} {'nodev'}
--   {'duplicate'}              this request id is already admitted and not settled
--   {'rate', rpm, 0, retry_ms}  (not counted)
--   {'busy', concurrent, rpm, remaining, reset_ms}  (counted against the rate limit)
--   {'quota', limit, used, held, rpm, remaining, reset_ms}  (counted too)
local WINDOW = 60000

local now = now_ms(ARGV[8])
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

local tier_limit, tier_rpm, concurrent = '', '60', 16
for i = 9, #ARGV, 4 do
  if ARGV[i] == acct[1] then
    tier_limit, tier_rpm, concurrent = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  end
end
local limit = acct[4]
if not limit or limit == '' then limit = tier_limit end
local rpm = tonumber((acct[5] and acct[5] ~= '') and acct[5] or tier_rpm)
local mode = ARGV[7]
local ttl = tonumber(ARGV[6])

-- Rate limit: an exact sliding window, at most rpm requests in any 60 s.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - WINDOW)
local count = redis.call('ZCARD', KEYS[3])
if mode ~= 'check' and count >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local retry = WINDOW
  if oldest[2] then retry = tonumber(oldest[2]) + WINDOW - now end
  return {'rate', rpm, 0, math.max(retry, 1)}
end

-- From here the request counts against the rate limit, also when it is refused for its
-- concurrency or the quota: a refusal is a request of the minute, or refusals would be free.
if mode ~= 'check' then
  if redis.call('HEXISTS', KEYS[5], ARGV[2]) == 1 then return {'duplicate'} end
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[3], WINDOW)
  count = count + 1
end
local reset = 0
if count > 0 then reset = WINDOW end

-- Concurrency: requests of this key admitted and not yet settled. An entry outlives its
-- request only when its instance died; live requests are renewed (renew.lua).
-- Expired entries are swept only when they would make the count reach the cap.
if mode == 'hold' and redis.call('ZCARD', KEYS[8]) >= concurrent then
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
  if redis.call('ZCARD', KEYS[8]) >= concurrent then
    return {'busy', concurrent, rpm, rpm - count, reset}
  end
end

-- Quota: release the holds of dead instances, then used + held + this <= limit.
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
local base, choices, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local hold = 0
if limit ~= '' then
  limit = tonumber(limit)
  if mode == 'hold' then
    local free = limit - used - held
    if base + choices * cap > free then
      cap = math.floor((free - base) / choices)
      if cap < 1 then return {'quota', limit, used, held, rpm, rpm - count, reset} end
    end
    hold = base + choices * cap
  end
else
  limit = -1
end

if mode == 'hold' then
  -- Every admitted request has a hold until it is settled, even an unlimited account's
  -- (of 0 tokens), so that a dead instance's requests leave the concurrency count too.
  redis.call('HSET', KEYS[5], ARGV[2], hold)
  redis.call('ZADD', KEYS[6], now + ttl, ARGV[2])
  redis.call('ZADD', KEYS[8], now + ttl, ARGV[2])
  if hold > 0 then held = redis.call('INCRBY', KEYS[7], hold) end
  for i = 5, 8 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
end
-- last_used_at: a write a minute per key at most, not one per request.
if mode ~= 'check' and now - (tonumber(key[2]) or 0) * 1000 > 60000 then
  redis.call('HSET', KEYS[2], 'last_used_at', math.floor(now / 1000))
end

return {'ok', rpm, rpm - count, reset, limit, used, held, cap, hold}

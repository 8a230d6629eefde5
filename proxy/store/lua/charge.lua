-- Charge usage from elsewhere (the Woozlit web app) to an account's month.
-- KEYS[1] month usage hash
-- ARGV[1] month 'YYYY-MM' the caller expects   ARGV[2] tokens   ARGV[3] source
-- ARGV[4] usage ttl s   ARGV[5] now in ms, for tests only ('' = Redis TIME)
-- Answers {'ok', used} | {'month', month}

local month = month_of(now_ms(ARGV[5]))
if month ~= ARGV[1] then return {'month', month} end
local tokens = tonumber(ARGV[2])
local used = redis.call('HINCRBY', KEYS[1], 'used', tokens)
redis.call('HINCRBY', KEYS[1], 's:' .. ARGV[3], tokens)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {'ok', used}

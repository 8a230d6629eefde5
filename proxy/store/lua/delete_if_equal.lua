-- Delete KEYS[1] only while it holds ARGV[1] (run as is, without clock.lua): a request that
-- gives its Idempotency-Key back never frees another's, nor a stored answer.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end

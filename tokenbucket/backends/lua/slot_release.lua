-- slot_release: give back the token's slot, or its place in line; wake the waiters now served.
--
-- ARGV[1] token
-- Reply: 1 when the token held a slot, else 0.

local now = server_time()
purge(now)
local token = ARGV[1]
local held = call('ZREM', KEYS[1], token)
call('HDEL', KEYS[2], token)
call('ZREM', KEYS[3], token)
call('ZREM', KEYS[4], token)
call('DEL', TAG .. ':wake:' .. token)
serve()
keep(now)
return held

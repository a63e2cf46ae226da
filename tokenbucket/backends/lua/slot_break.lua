-- slot_break: free the slot whose fence is ARGV[1], whoever holds it; wake the waiters now served.
--
-- ARGV[1] fence   ARGV[2] name
-- Reply: {1, info...} of the slot broken; {0} when no slot has that fence.

local now = server_time()
purge(now)
local owners = call('HGETALL', KEYS[2])
for i = 1, #owners, 2 do
  local token = owners[i]
  if fields(owners[i + 1])[1] == ARGV[1] then
    local broken = info(token, now, ARGV[2])
    call('ZREM', KEYS[1], token)
    call('HDEL', KEYS[2], token)
    serve()
    keep(now)
    if broken then return {1, unpack(broken)} end
    return {0}
  end
end
return {0}

-- bucket_cancel: cancel a reservation; refund its cost if it has not started (model.cancel).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  the reservation id (from bucket_reserve)
-- Reply: the tokens refunded, one string ("0" when it had started, was cancelled, or is unknown)

local refunded = 0
local member = ARGV[3]
if last_start and call('ZREM', Q, member) == 1 then
  local cost = tonumber(call('HGET', C, member)) or 0
  call('HDEL', C, member)
  local after = math.min(cap, tokens + cost)
  refunded = after - tokens
  tokens = after
  local last = call('ZRANGE', Q, -1, -1, 'WITHSCORES')
  last_start = last[2] and tonumber(last[2]) or nil
end
save()
return sformat('%.17g', refunded)

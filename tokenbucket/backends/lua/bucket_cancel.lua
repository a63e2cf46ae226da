-- bucket_cancel: cancel a reservation; if it has not started, refund what no later
-- reservation needs: its cost less refill x (start of the last remaining one - its start),
-- so a refund never lets a token be spent twice (model.cancel).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  the reservation id (from bucket_reserve)
-- Reply: the tokens refunded, one string ("0" when it had started, was cancelled, or is unknown)

local refunded = 0
local member = ARGV[3]
local start = last_start and call('ZSCORE', Q, member)
if start and call('ZREM', Q, member) == 1 then
  start = tonumber(start)
  local give = tonumber(call('HGET', C, member)) or 0
  call('HDEL', C, member)
  local last = call('ZRANGE', Q, -1, -1, 'WITHSCORES')
  last_start = last[2] and tonumber(last[2]) or nil
  if last_start and last_start > start then
    give = math.max(0, give - (last_start - start) * refill)
  end
  local after = math.min(cap, tokens + give)
  if after > tokens then
    refunded = after - tokens
    tokens = after
  end
end
save()
return sformat('%.17g', refunded)

-- bucket_void: take back, once, a call whose client lost the reply (RedisBackend._give_back).
--
-- A reserve whose reply never came (a stalled server, a dropped connection) may or may not
-- have run. Its client gives up on it and, once Redis answers again, sends this, which in one
-- atomic step:
--   * if the call is in the ring (it ran) and not yet taken back: cancels its reservation
--     (model.cancel) or, if it started at once, refunds ARGV[4] (model.settle's refund; the
--     client bounds it by what the upstream can still hold, model.refundable), and marks it
--     taken back (-2);
--   * if it is not (it never ran, or is still on its way): puts a tombstone (-1) in the ring, so
--     the call, if it arrives later, answers 'void' and charges nothing.
-- Only the last 32 charging calls are in the ring: a call older than that is never taken
-- back (its tokens are lost to the bucket, never spent twice).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  the call's id (8 bytes)
-- ARGV[4]  the most a start at once may get back
-- Reply: the tokens given back, one string

local id = ARGV[3]
local at = find_call(id)
local given = 0
if at then
  local mark = unpack_doubles('<d', ring, at)
  if mark < 0 then return '0' end -- voided or taken back already
  if mark > 0 then
    given = cancel_member(sformat('%d', mark))
  else
    given = refund(tonumber(ARGV[4]))
  end
  ring, ring_at = string.sub(ring, ring_at, at - 1) .. pack('<d', -2) .. string.sub(ring, at + 8), 1
  save()
else
  CALL = id
  save(nil, -1)
end
return sformat('%.17g', given)

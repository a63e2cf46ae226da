-- bucket_void: take back, once, a call whose client lost the reply (RedisBackend._give_back).
--
-- A reserve whose reply never came (a stalled server, a dropped connection) may or may not
-- have run. Its client gives up on it and, once Redis answers again, sends this:
--   * the call is in the ring (it ran): it is marked taken back (-2) and its mark is replied,
--     so the client cancels the reservation (an id) or refunds the start at once (0);
--   * it is not (it never ran, or is still on its way): a tombstone (-1) goes into the ring,
--     so if the call arrives later it answers 'void' and charges nothing.
-- Only the last 32 charging calls are in the ring: a call older than that is never taken
-- back (its tokens are lost to the bucket, never spent twice).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  the call's id (8 bytes)
-- Reply: "" (nothing to take back), else the call's mark: a reservation id, or 0

local id = ARGV[3]
local at = find_call(id)
if at then
  local mark = unpack_doubles('<d', ring, at)
  if mark < 0 then return '' end
  ring = string.sub(ring, 1, at - 1) .. pack('<d', -2) .. string.sub(ring, at + 8)
  save()
  return sformat('%d', mark)
end
CALL = id
remember(-1)
save()
return ''

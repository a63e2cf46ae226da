-- bucket_settle: charge `delta` more after a call, or refund -delta capped at capacity; while
-- reservations wait, only what is left of the refund when the last of them starts (model.settle).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  delta (may be negative; a charge may take the balance below -overdraft)
-- ARGV[4]  the call's id (8 bytes, or ""): a retry of a call in the ring is answered, not applied
-- Reply: "<tokens> <promised>" after settling, one string

local delta = tonumber(ARGV[3])
if delta >= 0 then
  tokens = tokens - delta
else
  refund(-delta)
end
save(nil, 0)
return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', promised())

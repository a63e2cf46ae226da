-- bucket_cancel: cancel a reservation; if it has not started, refund what no later
-- reservation needs: its cost less refill x (start of the last remaining one - its start),
-- so a refund never lets a token be spent twice (model.cancel).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  the reservation id (from bucket_reserve)
-- Reply: the tokens refunded, one string ("0" when it had started, was cancelled, or is unknown)

local refunded = cancel_member(ARGV[3])
save()
return sformat('%.17g', refunded)

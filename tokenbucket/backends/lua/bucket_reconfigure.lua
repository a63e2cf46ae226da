-- bucket_reconfigure: make ARGV[2] the bucket's policy, carrying the balance over (model.reconfigure).
--
-- The prelude (with ADOPT) brought the state up to now under the stored policy; the
-- balance is then capped at the new capacity. Waiting reservations keep their starts
-- and charges. A missing bucket is created under the new policy.
-- KEYS, ARGV[1..2]: see bucket.lua.
-- Reply: "<tokens> <promised>" after the change, one string

policy = ARGV[2]
cap, refill, debt, min_start, initial, idle_ms = unpack_doubles('<dddddd', policy)
if tokens > cap then tokens = cap end
save()
return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', promised())

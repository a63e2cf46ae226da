-- bucket_settle: charge `delta` more after a call, or refund -delta capped at capacity (model.settle).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  delta (may be negative; a charge may take the balance below -overdraft)
-- Reply: "<tokens> <promised>" after settling, one string

local delta = tonumber(ARGV[3])
tokens = tokens - delta
if delta < 0 then tokens = math.min(cap, tokens) end
save()
return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', promised())

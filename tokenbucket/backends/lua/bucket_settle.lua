-- bucket_settle: charge `delta` more after a call, or refund -delta capped at capacity (model.settle).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  delta (may be negative; a charge may take the balance below -overdraft)
-- Reply: "<tokens> <promised>" after settling, one string

local delta = num(ARGV[3])
load(true)
advance(true)
tokens = tokens - delta
if delta < 0 then tokens = math.min(cap, tokens) end
save()
return fmt(tokens) .. ' ' .. fmt(promised())

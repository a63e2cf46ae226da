-- bucket_sync: adopt the upstream's reported balance (model.sync).
--
-- The balance becomes `remaining - promised`, capped at capacity, so a report
-- that matches the bucket's prediction changes nothing.
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  remaining: the balance the upstream reports
-- Reply: "<tokens> <promised>" after syncing, one string

local remaining = tonumber(ARGV[3])
local p = promised()
tokens = math.min(cap, remaining - p)
save()
return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', p)

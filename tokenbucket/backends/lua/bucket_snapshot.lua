-- bucket_snapshot: describe the bucket at `now` (model.snapshot). Writes nothing.
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- Reply: "<tokens> <promised>", one string (a missing bucket reads as created now: `initial`, 0)

local p = 0
if last_start then
  local ids = call('ZRANGEBYSCORE', Q, '(' .. sformat('%.17g', now), '+inf')
  local costs = {}
  for i = 1, #ids, 1000 do
    local part = call('HMGET', C, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #part do costs[#costs + 1] = part[j] end
  end
  p = total(costs)
end
return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', p)

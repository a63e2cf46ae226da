-- slot_inspect: the holders and the length of the line; changes nothing.
--
-- ARGV[1] name
-- Reply: {limit, waiting, n, info of holder 1..., info of holder n...} (9 fields each; expired ones left out).

local now = server_time()
local out = {tonumber(call('HGET', KEYS[5], 'limit') or '0'), call('ZCOUNT', KEYS[4], '(' .. now, '+inf'), 0}
for _, token in ipairs(call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local one = info(token, now, ARGV[1])
  if one then
    out[3] = out[3] + 1
    for _, v in ipairs(one) do out[#out + 1] = v end
  end
end
return out

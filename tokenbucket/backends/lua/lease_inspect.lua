-- lease_inspect: describe the lease without changing anything.
--
-- KEYS[1]  the lease hash   {<prefix>lease:<name>}:lease
-- ARGV     none
-- Reply: {1, info...} when held; {0} when nobody holds it.

local held = info(KEYS[1])
if not held then
  return {0}
end
return {1, unpack(held)}

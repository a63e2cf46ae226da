-- bucket_reserve: charge a request's cost and say when it may start (model.reserve).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3]  cost (the caller has checked that it can ever start)
-- ARGV[4]  max_wait in seconds, or "" for no limit
-- ARGV[5]  the call's id (8 bytes, or ""): a retry of a call in the ring is answered, not applied
-- Reply: "<admitted> <seconds> <id>", one string (cheaper to send and parse than an array)
--   admitted  1 when charged; 0 when the delay would exceed max_wait (nothing charged)
--   seconds   the delay until the start (admitted) or until it could start (not admitted)
--   id        the reservation's id when it has to wait (pass it to bucket_cancel), else 0

local cost = tonumber(ARGV[3])
local max_wait = ARGV[4] ~= '' and tonumber(ARGV[4]) or nil
local t0 = updated
local level = cost -- the level the balance must reach to start (Policy.start_level)
if debt ~= 0 then level = math.max(min_start, cost - debt) end
local start = t0
if tokens < level - cap * 1e-9 then -- a shortfall within the slack is rounding (Policy.slack)
  start = t0 + (level - tokens) / refill
  if start == t0 then -- a wait too short for a double at t0: still a wait, of one step (as in the model)
    local _, e = math.frexp(t0)
    start = t0 + math.ldexp(1, e - 53)
  end
end
if last_start and last_start > start then start = last_start end -- never ahead of an earlier reservation
local delay = math.max(0, start - now)
if max_wait and delay > max_wait then
  save()
  return '0 ' .. sformat('%.17g', delay) .. ' 0'
end
tokens = tokens - cost
local id = 0
if start > t0 then
  if not last_start then call('DEL', C) end -- no stale costs from an evicted queue
  last_id = last_id + 1
  id = last_id
  local member = sformat('%d', id)
  call('ZADD', Q, start, member)
  call('HSET', C, member, cost)
  last_start = start
  save(true, id)
else
  save(nil, 0)
  if delay == 0 then return '1 0 0' end -- the common case, without formatting
end
return '1 ' .. sformat('%.17g', delay) .. ' ' .. sformat('%d', id)

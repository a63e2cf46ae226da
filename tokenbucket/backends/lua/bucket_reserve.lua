-- bucket_reserve: charge the cost of one request or more, in order, and say when each may
-- start (model.reserve, once per request, at one server time).
--
-- Several requests come in one call when a client coalesces the reserves its callers make at
-- once (RedisBackend's `coalesce`): the result is exactly that of one call per request in
-- this order at this time, and each request carries its own call id (see the ring in bucket.lua).
--
-- KEYS, ARGV[1..2]: see bucket.lua.
-- ARGV[3k+3], ARGV[3k+4], ARGV[3k+5]  for request k = 0, 1, ...:
--   cost (the caller has checked that it can ever start),
--   max_wait in seconds, or "" for no limit,
--   the call's id (8 bytes, or ""): a retry of a call in the ring is answered, not applied
-- Reply: per request "<admitted> <seconds> <id>", and the requests' replies in order joined by
-- ",", one string (cheaper to send and parse than an array)
--   admitted  1 when charged; 0 when the delay would exceed max_wait (nothing charged)
--   seconds   the delay until the start (admitted) or until it could start (not admitted)
--   id        the reservation's id when it has to wait (pass it to bucket_cancel), else 0

local t0 = updated
local queued, charged = false, false -- a reservation joined the queue; a request was decided here
local single = #ARGV == 5
local mark, added = nil, '' -- the ring entries of what was charged: one request's mark, or several entries
local replies = {}
for k = 3, #ARGV, 3 do
  CALL = ARGV[k + 2]
  local at = CALL ~= '' and find_call(CALL)
  local reply
  if at then
    reply = replayed(at)
  else
    charged = true
    local cost = tonumber(ARGV[k])
    local max_wait = ARGV[k + 1] ~= '' and tonumber(ARGV[k + 1]) or nil
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
      reply = '0 ' .. sformat('%.17g', delay) .. ' 0'
    else
      tokens = tokens - cost
      if start > t0 then
        if not last_start then call('DEL', C) end -- no stale costs from an evicted queue
        last_id = last_id + 1
        local member = sformat('%d', last_id)
        call('ZADD', Q, start, member)
        call('HSET', C, member, cost)
        last_start = start
        queued = true
        mark = last_id
        reply = '1 ' .. sformat('%.17g', delay) .. ' ' .. member
      else
        mark = 0
        reply = delay == 0 and '1 0 0' or '1 ' .. sformat('%.17g', delay) .. ' 0' -- the common case, unformatted
      end
      if not single and CALL ~= '' then added = added .. CALL .. pack('<d', mark) end
    end
  end
  replies[#replies + 1] = reply
end
if charged then save(queued, single and mark or nil, added) end -- (retries alone change nothing)
return #replies == 1 and replies[1] or table.concat(replies, ',')

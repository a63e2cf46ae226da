-- bucket_reserve_lane: reserve a request's cost in a lane that leaves `hold` tokens to more
-- urgent lanes (model.reserve_lane; read its docstring for the rule and the why).
--
-- KEYS[1..3], ARGV[1..2]: see bucket.lua.
-- KEYS[4]  hash    {<prefix><name>}:lanes  reservations made in a lane: field = id,
--                  value = "<hold> <margin>" (%.17g each); a waiting reservation without one
--                  has hold 0 and is never passed. Entries of started reservations are dropped
--                  here; the key expires with the queue.
-- ARGV[3]  cost (the caller has checked that the lane can ever start it)
-- ARGV[4]  hold: the tokens this lane leaves to more urgent ones
-- ARGV[5]  max_wait in seconds, or "" for no limit
-- ARGV[6]  the call's id (8 bytes, or ""): a retry of a call in the ring is answered, not applied
-- Reply: as bucket_reserve.lua.

local L = KEYS[4]
local cost = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local max_wait = ARGV[5] ~= '' and tonumber(ARGV[5]) or nil
local t0 = updated
local slack = cap * 1e-9
local level = cost
if debt ~= 0 then level = math.max(min_start, cost - debt) end
local need = level + hold

-- The waiting reservations, by start: id, start, cost, hold, margin.
local waiting = {}
if last_start then
  local q = call('ZRANGE', Q, 0, -1, 'WITHSCORES')
  local ids = {}
  for i = 1, #q, 2 do ids[#ids + 1] = q[i] end
  if #ids > 0 then
    local costs = call('HMGET', C, unpack(ids))
    local lanes = call('HMGET', L, unpack(ids))
    for i = 1, #ids do
      local h, m = 0, 0
      if lanes[i] then
        local a, b = string.match(lanes[i], '^(%S+) (%S+)$')
        h, m = tonumber(a), tonumber(b)
      end
      waiting[i] = {id = ids[i], start = tonumber(q[2 * i]), cost = tonumber(costs[i]) or 0, hold = h, margin = m}
    end
  end
end
-- Drop the lane entries of reservations that have started or gone.
local known = {}
for _, w in ipairs(waiting) do known[w.id] = true end
local stale = {}
for _, id in ipairs(call('HKEYS', L)) do
  if not known[id] then stale[#stale + 1] = id end
end
if #stale > 0 then call('HDEL', L, unpack(stale)) end

-- Never ahead of a reservation of this lane or a more urgent one.
local floor = t0
for _, w in ipairs(waiting) do
  if w.hold <= hold and w.start > floor then floor = w.start end
end
local cuts = {floor}
for _, w in ipairs(waiting) do
  if w.start > floor and w.start ~= cuts[#cuts] then cuts[#cuts + 1] = w.start end
end
local start = math.huge
for i, a in ipairs(cuts) do
  local ok, costs = true, {}
  for _, w in ipairs(waiting) do
    if w.start > a then
      if w.hold <= hold or w.margin < cost - slack then ok = false break end
      costs[#costs + 1] = w.cost
    end
  end
  if ok then
    local balance = tokens + (a - t0) * refill + total(costs)
    local t
    if balance >= need - slack then
      t = a
    else
      t = a + (need - balance) / refill
      if t == a then
        local _, e = math.frexp(a)
        t = a + math.ldexp(1, e - 53)
      end
    end
    if i == #cuts or t < cuts[i + 1] then
      start = t
      break
    end
  end
end

local delay = math.max(0, start - now)
if max_wait and delay > max_wait then
  save()
  return '0 ' .. sformat('%.17g', delay) .. ' 0'
end
-- The reservations it passes keep their starts; their margins shrink by its cost.
local later = {}
for _, w in ipairs(waiting) do
  if w.start > start then
    call('HSET', L, w.id, sformat('%.17g', w.hold) .. ' ' .. sformat('%.17g', w.margin - cost))
    later[#later + 1] = w.cost
  end
end
local margin = tokens + (start - t0) * refill + total(later) - level
tokens = tokens - cost
local id = 0
if start > t0 then
  if not last_start then call('DEL', C, L) end -- no stale costs from an evicted queue
  last_id = last_id + 1
  id = last_id
  local member = sformat('%d', id)
  call('ZADD', Q, start, member)
  call('HSET', C, member, cost)
  call('HSET', L, member, sformat('%.17g', hold) .. ' ' .. sformat('%.17g', margin))
  if not last_start or start > last_start then last_start = start end
  save(true, id)
  call('PEXPIRE', L, call('PTTL', Q))
else
  save(nil, 0)
  if delay == 0 then return '1 0 0' end
end
return '1 ' .. sformat('%.17g', delay) .. ' ' .. sformat('%d', id)

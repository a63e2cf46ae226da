-- reserve_all: reserve a cost in each of several buckets for one request, all or nothing
-- (model.reserve_all), in one atomic step.
--
-- Every bucket is stored exactly as bucket.lua stores it (read that prelude for the state, the
-- queue, the costs, the epoch and the ring): this script loads, advances and saves each one
-- the way the prelude does, in a loop, so a bucket may be used alone by the bucket_* scripts and
-- together with others by this one. It is a script of its own because the prelude is
-- straight-line code for one bucket (for the speed of the single-bucket path).
--
-- KEYS: three per bucket, in order (KEYS[3i-2..3i]: its state, queue and costs, as KEYS[1..3]
--       of bucket.lua). On Redis Cluster every key must be in one slot (the client checks).
-- ARGV[1]  now in seconds, or "" for the server clock (counted from EPOCH, as in bucket.lua)
-- ARGV[2]  max_wait in seconds, or "" for no limit
-- ARGV[3]  the call's id (8 bytes, or ""): a retry of a call in a ring is answered, not applied
-- ARGV[2+2i], ARGV[3+2i]  bucket i's policy (48 bytes, as ARGV[2] of bucket.lua) and its cost
--          (the caller has checked that each cost can ever start)
-- Reply: "<admitted> <seconds> <id1> ... <idn>", one string
--   admitted  1 when every bucket was charged; 0 when the delay would exceed max_wait (none was)
--   seconds   the delay until the start (admitted) or until it could start (not admitted)
--   id i      bucket i's reservation id when the request has to wait, else 0 (0 for all when refused)
-- or 'void' for a call its client gave up on (bucket_void on any of its buckets).

if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  redis.replicate_commands()
end

local call, tonumber, sformat, pack, unpack_doubles = redis.call, tonumber, string.format, struct.pack, struct.unpack
local NONE = -math.huge
local RING = 32 * 16
local EPOCH = 1780000000
local MAX_NEED = 30 * 86400
local n = #KEYS / 3
local max_wait = ARGV[2] ~= '' and tonumber(ARGV[2]) or nil
local CALL = ARGV[3]

local now, frame
if ARGV[1] == '' then
  local t = call('TIME')
  now, frame = (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000, EPOCH
else
  now, frame = tonumber(ARGV[1]), 0
end

-- Load every bucket (the prelude's loading). `off`: what the bucket's times add to count from
-- this call's frame (0 unless it keeps reservations made on another clock).
local b = {}
for i = 1, n do
  local policy = ARGV[2 + 2 * i]
  if #policy ~= 48 then
    return redis.error_reply('ERR tokenbucket: every policy of reserve_all must be 48 bytes, six packed doubles')
  end
  local p = {B = KEYS[3 * i - 2], Q = KEYS[3 * i - 1], C = KEYS[3 * i], policy = policy, cost = tonumber(ARGV[3 + 2 * i])}
  p.cap, p.refill, p.debt, p.min_start, p.initial, p.idle_ms = unpack_doubles('<dddddd', policy)
  p.ring, p.ring_at = '', 1 -- the ring is string.sub(p.ring, p.ring_at), not copied (see bucket.lua)
  local raw = call('GET', p.B)
  if raw then
    local c, r, d, m, init
    if #raw >= 88 and (#raw - 88) % 16 == 0 then
      p.tokens, p.updated, p.last_id, p.last_start, p.epoch, c, r, d, m, init = unpack_doubles('<dddddddddd', raw)
      p.ring, p.ring_at = raw, 89
    elseif #raw == 80 then
      p.tokens, p.updated, p.last_id, p.last_start, c, r, d, m, init = unpack_doubles('<ddddddddd', raw)
      p.epoch = 0
    else
      return redis.error_reply('ERR tokenbucket: ' .. p.B .. ' does not hold the state of a bucket')
    end
    if c ~= p.cap or r ~= p.refill or d ~= p.debt or m ~= p.min_start or init ~= p.initial then
      return redis.error_reply(sformat('ERR tokenbucket-policy %.17g %.17g %.17g %.17g %.17g %d', c, r, d, m, init, i))
    end
    if p.last_start == NONE then p.last_start = nil end
    if p.epoch ~= frame and not p.last_start then
      p.updated, p.epoch = p.updated + (p.epoch - frame), frame
    end
  else
    call('DEL', p.Q, p.C)
    local t = call('TIME')
    p.tokens, p.updated, p.last_start, p.epoch = p.initial, nil, nil, frame
    p.last_id = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  p.off = p.epoch - frame
  if p.updated and p.updated + p.off > now then now = p.updated + p.off end -- one clock for all
  b[i] = p
end

-- The ring (see bucket.lua): where call `id` is in bucket p's ring (the position of its mark in p.ring), or nil.
local function find_call(p, id)
  local at = p.ring_at
  while true do
    local i = string.find(p.ring, id, at, true)
    if not i then return nil end
    if (i - p.ring_at) % 16 == 0 then return i + 8 end
    at = i + 1
  end
end

-- A retry of a call that ran: answer as it was answered, change nothing.
if CALL ~= '' then
  local found, marks = false, {}
  for i = 1, n do
    local at = find_call(b[i], CALL)
    marks[i] = at and unpack_doubles('<d', b[i].ring, at) or 0
    if at then
      found = true
      if marks[i] < 0 then return 'void' end
    end
  end
  if found then
    local delay, ids = 0, {}
    for i = 1, n do
      ids[i] = sformat('%d', marks[i])
      if marks[i] > 0 then
        local start = tonumber(call('ZSCORE', b[i].Q, ids[i]))
        if start and start + b[i].off - now > delay then delay = start + b[i].off - now end
      end
    end
    return '1 ' .. sformat('%.17g', delay) .. ' ' .. table.concat(ids, ' ')
  end
end

-- Advance each to now (the prelude's advance), and find its own start (model.earliest_start).
local start = now
for i = 1, n do
  local p = b[i]
  local t = now - p.off
  if not p.updated then p.updated = t end
  if t > p.updated then
    if p.last_start then
      if p.last_start <= t then
        call('DEL', p.Q, p.C)
        p.last_start = nil
      else
        local gone = call('ZRANGEBYSCORE', p.Q, '-inf', t)
        if #gone > 0 then
          for j = 1, #gone, 1000 do
            call('HDEL', p.C, unpack(gone, j, math.min(j + 999, #gone)))
          end
          call('ZREMRANGEBYSCORE', p.Q, '-inf', t)
        end
      end
    end
    if p.tokens < p.cap then p.tokens = math.min(p.cap, p.tokens + (t - p.updated) * p.refill) end
    p.updated = t
  end
  local level = p.cost
  if p.debt ~= 0 then level = math.max(p.min_start, p.cost - p.debt) end
  local own = t
  if p.tokens < level - p.cap * 1e-9 then
    own = t + (level - p.tokens) / p.refill
    if own == t then
      local _, e = math.frexp(t)
      own = t + math.ldexp(1, e - 53)
    end
  end
  if p.last_start and p.last_start > own then own = p.last_start end
  p.own = own + p.off
  if p.own > start then start = p.own end
end

-- Store bucket p with its TTL (the prelude's save); `mark`: this call joins its ring with that mark.
local function save(p, queued, mark)
  local need = (p.cap - p.tokens) / p.refill
  if p.last_start and p.last_start - p.updated > need then need = p.last_start - p.updated end
  if need > MAX_NEED then need = MAX_NEED end
  local ms = math.ceil(math.max(0, need) * 1000) + p.idle_ms
  if ms < 1000 then ms = 1000 end
  local head, ring, from = pack('<ddddd', p.tokens, p.updated, p.last_id, p.last_start or NONE, p.epoch), p.ring, p.ring_at
  local value
  if mark and CALL ~= '' then
    if #ring - from + 17 > RING then from = #ring - RING + 17 end
    value = head .. p.policy .. string.sub(ring, from) .. CALL .. pack('<d', mark)
  else
    value = head .. p.policy .. string.sub(ring, from)
  end
  call('SET', p.B, value, 'PX', ms)
  if queued then
    call('PEXPIRE', p.Q, ms)
    call('PEXPIRE', p.C, ms)
  end
end

local delay = math.max(0, start - now)
if max_wait and delay > max_wait then
  for i = 1, n do save(b[i]) end
  return '0 ' .. sformat('%.17g', delay) .. string.rep(' 0', n)
end

-- Charge each; one held past its own start also pays what its upstream loses to the cap meanwhile.
local ids = {}
for i = 1, n do
  local p = b[i]
  local charge = p.cost
  if start > p.own then
    charge = charge + math.max(0, p.tokens + (start - now) * p.refill - p.cap)
  end
  p.tokens = p.tokens - charge
  local mark = 0
  if start > now then
    if not p.last_start then call('DEL', p.C) end
    p.last_id = p.last_id + 1
    mark = p.last_id
    local member = sformat('%d', mark)
    call('ZADD', p.Q, start - p.off, member)
    call('HSET', p.C, member, sformat('%.17g', charge))
    p.last_start = start - p.off
  end
  save(p, mark ~= 0, mark)
  ids[i] = sformat('%d', mark)
end
if delay == 0 then return '1 0 ' .. table.concat(ids, ' ') end
return '1 ' .. sformat('%.17g', delay) .. ' ' .. table.concat(ids, ' ')

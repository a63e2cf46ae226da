-- tokenbucket: the bucket arithmetic shared by every bucket_*.lua script.
--
-- This prelude is prepended to each bucket_<operation>.lua when the script is
-- loaded, so every operation is one EVALSHA. It implements the arithmetic of
-- tokenbucket/_model.py exactly (tests/test_redis_differential.py compares
-- the two step by step); read the docstrings there for the why.
--
-- KEYS (every bucket script; one hash tag, so a bucket lives in one cluster slot):
--   KEYS[1]  string  {<prefix><name>}:bucket  the state, 88 bytes: eleven little-endian doubles,
--                    struct '<ddddd' then ARGV[2] as last written: the balance a new request sees,
--                    when it was computed (s), the last reservation id handed out, the start of the
--                    last pending reservation (-inf when none), the epoch those two times count
--                    from, then the policy (for operators: the CLI reads it back, see
--                    tokenbucket.backends._redis.parse_state), then the ring: the calls that
--                    charged most recently, up to RING of them, 16 bytes each (the client's 8-byte
--                    call id, then a double: the reservation id, 0 for a start at once, -1 for a
--                    call its client gave up on, -2 for one whose tokens it took back). A retried
--                    call finds itself there and answers again instead of charging twice.
--                    tokenbucket 0.1 wrote 80 bytes, without the epoch (0) or ring.
--   KEYS[2]  zset    {<prefix><name>}:queue   reservations not started: member = id, score = start (s)
--   KEYS[3]  hash    {<prefix><name>}:costs   reservations not started: field = id, value = cost
-- ARGV (every bucket script):
--   ARGV[1]  now in seconds, or "" to read the server clock (TIME), counted from EPOCH so that
--            start times keep their precision (at 1.8e9 s a double resolves 0.24 us; at 1e8 s, 15 ns)
--   ARGV[2]  the policy, 48 bytes: six little-endian doubles (struct '<dddddd'): capacity, refill
--            per second, overdraft (inf for none), min_start, initial (the balance of a bucket created
--            or found missing), idle_ms (how long a full bucket with nothing pending is kept)
--   ARGV[3...] the operation's own arguments (see each bucket_*.lua); for bucket_reserve and
--            bucket_settle the last is the call's 8-byte id ("" for none), see the ring above
-- Other numbers travel as text that round-trips exactly (Python repr, Lua %.17g).
-- Every write sets the bucket key's TTL to the time to refill to full or until the
-- last reservation starts, whichever is later (at most 30 days), plus idle_ms (never less than 1 s);
-- queue and costs get the same TTL whenever a reservation joins them.
--
-- This runs on every acquire, so it is built for speed: the state is read with one
-- GET and written with one SET ... PX (value and TTL together); numbers that every
-- call reads or writes are packed doubles, not text (no parsing, no formatting);
-- loading and advancing are straight-line code, not functions (a Lua closure is
-- created on every call, and costs more than the arithmetic); and the ring is searched
-- where GET put it and copied once, into the value SET writes (every byte a script
-- allocates is paid again by Lua's garbage collector: the ring's copies cost more than
-- the arithmetic too).
--
-- WRITES: true unless the operation only reads (bucket_snapshot). ADOPT: true for
-- bucket_reconfigure, which replaces the stored policy (every other operation refuses a
-- policy that differs from the stored one). REFUNDS: true for the operations that give tokens
-- back (bucket_cancel, bucket_settle, bucket_void). RECORDS: for the operations that are not
-- idempotent by themselves ('reserve', 'settle'; else false): their calls are remembered in
-- the ring (save's `mark`), and one found there is answered again, not applied again; 'each'
-- for bucket_reserve, which carries one call id per request it reserves for, looks each up
-- itself (replayed) and adds them to the ring together (`added`). The loader
-- (tokenbucket.backends._redis.lua_source) sets them on the line before this prelude.
--
-- A policy that differs from the stored one (its first five numbers: idle_ms may differ) is
-- refused with the error 'tokenbucket-policy <capacity> <refill> <overdraft> <min_start>
-- <initial>' (the stored one), before anything is written.

if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  redis.replicate_commands() -- Redis < 7: replicate effects, so TIME may precede writes
end

local call, tonumber, sformat, pack, unpack_doubles = redis.call, tonumber, string.format, struct.pack, struct.unpack
local NONE = -math.huge -- the stored start of the last pending reservation when there is none
local B, Q, C = KEYS[1], KEYS[2], KEYS[3]
local RING = 32 * 16 -- bytes: the last 32 calls that charged
local CALL = RECORDS and RECORDS ~= 'each' and ARGV[#ARGV] or '' -- this call's id
local policy = ARGV[2]
if #policy ~= 48 then
  return redis.error_reply('ERR tokenbucket: the policy (ARGV[2]) must be 48 bytes, six packed doubles')
end
local cap, refill, debt, min_start, initial, idle_ms = unpack_doubles('<dddddd', policy)
-- Server time counts from EPOCH (2026-05-28), a client's time from 0: `frame` says which.
local EPOCH = 1780000000
local now, frame
if ARGV[1] == '' then
  local t = call('TIME')
  now, frame = (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000, EPOCH
else
  now, frame = tonumber(ARGV[1]), 0
end

-- The state: `tokens` as a new request sees it, `updated`, the last id handed
-- out, the start of the last pending reservation (nil when none), and the
-- epoch `updated` and the queue's start times count from.
local tokens, updated, last_id, last_start, epoch
-- The ring is string.sub(ring, ring_at): the state as read, not copied out of it (a copy
-- costs more than the arithmetic: the Lua heap's garbage collector pays for every byte).
local ring, ring_at = '', 1

-- Load it. A missing bucket is created per `initial` (fresh() in the model);
-- writers also drop queue entries a lost bucket left behind. A key holding
-- something else is an error, never overwritten.
local raw = call('GET', B)
if raw then
  local c, r, d, m, i -- the stored policy (compared as numbers: no string is made for it)
  if #raw >= 88 and (#raw - 88) % 16 == 0 then
    tokens, updated, last_id, last_start, epoch, c, r, d, m, i = unpack_doubles('<dddddddddd', raw)
    ring, ring_at = raw, 89
  elseif #raw == 80 then -- written by tokenbucket 0.1: absolute times
    tokens, updated, last_id, last_start, c, r, d, m, i = unpack_doubles('<ddddddddd', raw)
    epoch = 0
  else
    return redis.error_reply('ERR tokenbucket: ' .. B .. ' does not hold the state of a bucket')
  end
  if c ~= cap or r ~= refill or d ~= debt or m ~= min_start or i ~= initial then
    if not ADOPT then
      return redis.error_reply(sformat('ERR tokenbucket-policy %.17g %.17g %.17g %.17g %.17g', c, r, d, m, i))
    end
    cap, refill, debt, min_start, initial = c, r, d, m, i -- advance under the stored policy
  end
  if last_start == NONE then last_start = nil end
  if epoch ~= frame then
    if WRITES and not last_start then
      updated, epoch = updated + (epoch - frame), frame -- nothing queued: move to this call's frame
    else
      now = now + (frame - epoch) -- count this call's time from the stored epoch
    end
  end
  -- A clock that stepped back: time stands still until it catches up (as in the model).
  if now < updated then now = updated end
else
  tokens, updated, last_start, epoch = initial, now, nil, frame
  if WRITES then
    call('DEL', Q, C)
    -- ids keep growing across a lost state: seed them from the server clock in microseconds
    local t = call('TIME')
    last_id = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
end

-- Advance (advance() in the model): refill up to `now`; writers forget
-- reservations that have started.
if now > updated then
  if last_start then
    if last_start <= now then
      if WRITES then call('DEL', Q, C) end
      last_start = nil
    elseif WRITES then
      local gone = call('ZRANGEBYSCORE', Q, '-inf', now)
      if #gone > 0 then
        for i = 1, #gone, 1000 do
          call('HDEL', C, unpack(gone, i, math.min(i + 999, #gone)))
        end
        call('ZREMRANGEBYSCORE', Q, '-inf', now)
      end
    end
  end
  if tokens < cap then
    tokens = math.min(cap, tokens + (now - updated) * refill)
  end
  updated = now
end

-- The ring (see KEYS[1]): where call `id` is in it (the position of its mark in `ring`), or nil.
local function find_call(id)
  local at = ring_at
  while true do
    local i = string.find(ring, id, at, true)
    if not i then return nil end
    if (i - ring_at) % 16 == 0 then return i + 8 end
    at = i + 1
  end
end

-- Neumaier's compensated sum, so `promised` agrees with math.fsum in the model.
local function total(values)
  local sum, comp = 0, 0
  for i = 1, #values do
    local v = tonumber(values[i]) or 0
    local s = sum + v
    if math.abs(sum) >= math.abs(v) then
      comp = comp + ((sum - s) + v)
    else
      comp = comp + ((v - s) + sum)
    end
    sum = s
  end
  return sum + comp
end

-- Tokens charged to reservations that have not started (after advancing, in a writer).
local function promised()
  if not last_start then return 0 end
  return total(call('HVALS', C))
end

-- Store the state with its TTL, derived from durations (so an injected clock works):
-- refill to full, or until the last reservation starts, but at most MAX_NEED (30 days: a
-- bucket in deeper debt that nobody touches for that long is dropped, and recreated per
-- `initial`), plus idle_ms; at least 1 s.
local MAX_NEED = 30 * 86400
-- `queued`: a reservation just joined the queue, which gets the same TTL. `mark`: this
-- call (CALL) charged, and joins the ring with that mark; or `added`: the ring entries of
-- the requests a bucket_reserve of several charged, in order. The oldest leave a full ring.
-- `ms` goes to redis.call as a Lua number, a whole one: every Redis version sends
-- that as its plain digits (%.17g in older ones, integer printing in newer ones).
-- The value is made by one concatenation (one string, the only copy of the ring).
local function save(queued, mark, added)
  local need = (cap - tokens) / refill
  if last_start and last_start - updated > need then need = last_start - updated end
  if need > MAX_NEED then need = MAX_NEED end
  local ms = math.ceil(math.max(0, need) * 1000) + idle_ms
  if ms < 1000 then ms = 1000 end
  local head = pack('<ddddd', tokens, updated, last_id, last_start or NONE, epoch)
  local value
  if mark and CALL ~= '' then
    local from = ring_at
    if #ring - from + 17 > RING then from = #ring - RING + 17 end
    value = head .. policy .. string.sub(ring, from) .. CALL .. pack('<d', mark)
  elseif added and added ~= '' then
    if #added > RING then added = string.sub(added, -RING) end
    local from = ring_at
    if #ring - from + 1 + #added > RING then from = #ring + 1 + #added - RING end
    value = head .. policy .. string.sub(ring, from) .. added
  elseif ring_at == 1 then
    value = head .. policy .. ring
  else
    value = head .. policy .. string.sub(ring, ring_at)
  end
  call('SET', B, value, 'PX', ms)
  if queued then
    call('PEXPIRE', Q, ms)
    call('PEXPIRE', C, ms)
  end
end

-- Refunds (the scripts that give tokens back set REFUNDS, so only they make these closures).
local cancel_member, refund
if REFUNDS then
  -- Cancel waiting reservation `member` (model.cancel): refund what no later reservation needs,
  -- its cost less refill x (start of the last remaining one - its start). Returns the refund.
  cancel_member = function(member)
    local start = last_start and call('ZSCORE', Q, member)
    if not (start and call('ZREM', Q, member) == 1) then return 0 end
    start = tonumber(start)
    local give = tonumber(call('HGET', C, member)) or 0
    call('HDEL', C, member)
    local last = call('ZRANGE', Q, -1, -1, 'WITHSCORES')
    last_start = last[2] and tonumber(last[2]) or nil
    if last_start and last_start > start then
      give = math.max(0, give - (last_start - start) * refill)
    end
    local after = math.min(cap, tokens + give)
    if after <= tokens then return 0 end
    local refunded = after - tokens
    tokens = after
    return refunded
  end
  -- Give back up to `give` tokens (model.settle's refund): while reservations wait, only what
  -- is left of it when the last of them starts; never above capacity. Returns the refund.
  refund = function(give)
    if last_start then give = math.max(0, give - (last_start - updated) * refill) end
    local before = tokens
    tokens = math.max(tokens, math.min(cap, tokens + give))
    return tokens - before
  end
end

-- A call that is in the ring already ran: this is its retry. Answer as it was answered
-- (what it charged stands), and change nothing. `at` is where the ring holds its mark.
local function replayed(at)
  local mark = unpack_doubles('<d', ring, at)
  if mark < 0 then return 'void' end -- its client gave up on it (bucket_void)
  if RECORDS == 'settle' then return sformat('%.17g', tokens) .. ' ' .. sformat('%.17g', promised()) end
  if mark == 0 then return '1 0 0' end
  local start = tonumber(call('ZSCORE', Q, sformat('%d', mark)))
  local delay = start and math.max(0, start - now) or 0
  return '1 ' .. sformat('%.17g', delay) .. ' ' .. sformat('%d', mark)
end
if CALL ~= '' then
  local at = find_call(CALL)
  if at then return replayed(at) end
end

-- ---------------------------------------------------------------- operation

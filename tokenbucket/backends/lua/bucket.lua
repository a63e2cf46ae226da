-- tokenbucket: the bucket arithmetic shared by every bucket_*.lua script.
--
-- This prelude is prepended to each bucket_<operation>.lua when the script is
-- loaded, so every operation is one EVALSHA. It implements the arithmetic of
-- tokenbucket/_model.py exactly (tests/test_redis_differential.py compares
-- the two step by step); read the docstrings there for the why.
--
-- KEYS (every bucket script; one hash tag, so a bucket lives in one cluster slot):
--   KEYS[1]  hash  {<prefix><name>}:bucket  t = tokens, u = updated (s), n = last reservation id,
--                  l = start of the last pending reservation ("-" when none), x = when the keys
--                  expire (server ms), p = the policy (ARGV[2]), and for operators: cap, refill,
--                  overdraft, min_start, initial
--   KEYS[2]  zset  {<prefix><name>}:queue   reservations not started: member = id, score = start (s)
--   KEYS[3]  hash  {<prefix><name>}:costs   reservations not started: field = id, value = cost
-- ARGV (every bucket script):
--   ARGV[1]  now in seconds, or "" to read the server clock (TIME)
--   ARGV[2]  the policy: "<capacity> <refill per second> <overdraft or inf> <min_start> <initial> <idle_ms>"
--            (initial: the balance of a bucket created or found missing; idle_ms: how long a full
--            bucket with nothing pending is kept)
--   ARGV[3...] the operation's own arguments (see each bucket_*.lua)
-- Numbers travel as text that round-trips exactly (Python repr, Lua %.17g).
-- Every key written has a TTL of at least: the time to refill to full or until
-- the last reservation starts, whichever is later, plus idle_ms (and at most
-- that plus max(idle_ms, 1 s)); never less than 1 s.

if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  redis.replicate_commands() -- Redis < 7: replicate effects, so TIME may precede writes
end

-- Globals read once. A Lua number passed to redis.call is sent as text that round-trips exactly
-- (%.17g, or the shortest such text in newer Redis); ids and TTLs are formatted as integers here.
local call, tonumber, sformat, huge = redis.call, tonumber, string.format, math.huge

local function num(text)
  if text == 'inf' then return huge end
  return tonumber(text)
end

local function fmt(x)
  return sformat('%.17g', x)
end

local function server_time()
  local t = call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local B, Q, C = KEYS[1], KEYS[2], KEYS[3]
local server_now -- the server clock in seconds, once read
local now
if ARGV[1] == '' then
  server_now = server_time()
  now = server_now
else
  now = num(ARGV[1])
end
local cap, refill, debt, min_start, initial, idle_ms
do
  local a, b, c, d, e, f = string.match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  cap, refill, debt, min_start, initial, idle_ms = num(a), num(b), num(c), num(d), num(e), tonumber(f)
end
local MIN_TTL_MS, MAX_TTL_MS = 1000, 1e15

-- The state: `tokens` as a new request sees it, `updated`, the last id handed
-- out, the start of the last pending reservation (nil when none), and the
-- policy the bucket was last written with.
local tokens, updated, last_id, last_start, stored_policy, expires

-- Read the state; a missing (or unreadable) bucket is created per `initial`
-- (fresh() in the model). `write` scripts also drop queue entries a lost
-- bucket left behind.
local function load(write)
  local h = call('HMGET', B, 't', 'u', 'n', 'l', 'p', 'x')
  tokens, updated, last_id = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
  last_start, stored_policy, expires = tonumber(h[4]), h[5], tonumber(h[6])
  if not (tokens and updated and last_id) then
    tokens, updated, last_start, stored_policy, expires = initial, now, nil, nil, nil
    if write then
      call('DEL', Q, C)
      -- ids keep growing across a lost state: seed them from the server clock in microseconds
      local t = call('TIME')
      last_id = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
  end
end

-- advance(): refill up to `now` and forget reservations that have started.
local function advance(write)
  if now <= updated then return end
  if last_start then
    if last_start <= now then
      if write then call('DEL', Q, C) end
      last_start = nil
    elseif write then
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

-- Tokens charged to reservations that have not started (after advance(true)).
local function promised()
  if not last_start then return 0 end
  return total(call('HVALS', C))
end

-- Store the state, with TTLs derived from durations (so an injected clock works).
-- The keys must live `need` (refill to full, or until the last reservation
-- starts) plus idle_ms. A TTL is set with that much again as slack and its
-- deadline (server ms) kept in field x, so most writes skip the PEXPIREs.
-- `force`: a queue key was just created and needs its TTL now.
local function save(force)
  local need = (cap - tokens) / refill
  if last_start and last_start - updated > need then need = last_start - updated end
  local ms = math.ceil(math.max(0, need) * 1000) + idle_ms
  if ms < MIN_TTL_MS then ms = MIN_TTL_MS end
  local clock_ms = math.floor((server_now or server_time()) * 1000)
  local l = last_start or '-'
  if force or not expires or expires < clock_ms + ms then
    ms = ms + math.max(idle_ms, MIN_TTL_MS)
    if ms > MAX_TTL_MS then ms = MAX_TTL_MS end
    expires = clock_ms + ms - 1 -- PEXPIRE counts from the script's start, a moment earlier
    call('HSET', B, 't', tokens, 'u', updated, 'n', last_id, 'l', l, 'x', expires)
    ms = sformat('%d', ms) -- an integer in any Redis version's number formatting
    call('PEXPIRE', B, ms)
    if last_start then
      call('PEXPIRE', Q, ms)
      call('PEXPIRE', C, ms)
    end
  else
    call('HSET', B, 't', tokens, 'u', updated, 'n', last_id, 'l', l)
  end
  if stored_policy ~= ARGV[2] then -- written when it changes, so operators (the CLI) can read it
    local a, b, c, d, e = string.match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+)')
    call('HSET', B, 'p', ARGV[2], 'cap', a, 'refill', b, 'overdraft', c, 'min_start', d, 'initial', e)
  end
end

-- The policy's admission level for a request of `cost` (Policy.start_level).
local function start_level(cost)
  if debt == 0 then return cost end
  return math.max(min_start, cost - debt)
end

-- ---------------------------------------------------------------- operation

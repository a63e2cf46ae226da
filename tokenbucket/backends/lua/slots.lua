-- tokenbucket: helpers shared by every slot_*.lua script (concurrency limits).
--
-- This prelude is prepended to each slot_<operation>.lua when the script is
-- loaded, so every slot operation is one EVALSHA. See tokenbucket/_slots.py
-- for the semantics and tokenbucket/backends/_redis_slots.py for the client.
--
-- Keys of limit <name>, one hash tag (one cluster slot); every key expires
-- after the last holder's or waiter's TTL:
--   KEYS[1] {<prefix>slots:<name>}:holders  zset  token -> expiry (server ms)
--   KEYS[2] {<prefix>slots:<name>}:owners   hash  token -> fence, acquired, renewed,
--                                                 renewals, host, pid, task (\31-separated)
--   KEYS[3] {<prefix>slots:<name>}:line     zset  waiter token -> the order it joined in
--   KEYS[4] {<prefix>slots:<name>}:alive    zset  waiter token -> expiry (server ms)
--   KEYS[5] {<prefix>slots:<name>}:meta     hash  limit, seq (the last place in line given)
--   KEYS[6] {<prefix>slots:<name>}:fence    string the last fence handed out (outlives the rest)
--   {<prefix>slots:<name>}:wake:<token>     list  pushed when that waiter may be served
--                                                 (in the same slot; made from KEYS[1])
-- A slot "info" reply is the flat array of lease.lua:
--   {fence, host, pid, task, acquired, renewed, renewals, expires_in_ms, name}

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 7: replicate effects, so TIME may precede writes
end

local call = redis.call
local TAG = string.sub(KEYS[1], 1, #KEYS[1] - #':holders')
local SEP = '\31'

local function server_time()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

local function fields(raw)
  local out = {}
  for part in string.gmatch(raw .. SEP, '(.-)' .. SEP) do out[#out + 1] = part end
  return out
end

-- Drop the holders and waiters whose TTL ran out.
local function purge(now)
  local gone = call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #gone > 0 then
    call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    call('HDEL', KEYS[2], unpack(gone))
  end
  local left = call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #left > 0 then
    call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    call('ZREM', KEYS[3], unpack(left))
  end
end

-- The info array of the slot held by `token`, or nil.
local function info(token, now, name)
  local raw = call('HGET', KEYS[2], token)
  local expires = call('ZSCORE', KEYS[1], token)
  if not raw or not expires then return nil end
  local f = fields(raw)
  return {f[1], f[5], f[6], f[7], f[2], f[3], f[4], string.format('%d', tonumber(expires) - now), name}
end

-- Wake the waiters at the front of the line that a free slot now awaits.
local function serve()
  local limit = tonumber(call('HGET', KEYS[5], 'limit') or '0')
  local free = limit - call('ZCARD', KEYS[1])
  if free > 0 then
    for _, token in ipairs(call('ZRANGE', KEYS[3], 0, free - 1)) do
      local wake = TAG .. ':wake:' .. token
      call('DEL', wake)
      call('RPUSH', wake, '1')
      call('PEXPIRE', wake, 60000)
    end
  end
end

-- Every key lives as long as its longest-lived holder or waiter (and a second more).
local function keep(now)
  local last = 0
  local h = call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if h[2] then last = tonumber(h[2]) end
  local a = call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if a[2] and tonumber(a[2]) > last then last = tonumber(a[2]) end
  if last <= now then
    call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
    return
  end
  local ms = last - now + 1000
  for i = 1, 5 do
    if call('EXISTS', KEYS[i]) == 1 then call('PEXPIRE', KEYS[i], ms) end
  end
end

-- cost_append.lua: add one per-unit cost to an operation's window in the cost hash (RedisCostStore.append).
--
-- KEYS[1]  the hash; each field is an operation, each value a JSON list of recent per-unit costs (oldest first)
-- ARGV[1]  the operation (the field)
-- ARGV[2]  the per-unit cost to add (a decimal number)
-- ARGV[3]  the window: how many recent costs to keep
-- ARGV[4]  the hash's time to live in milliseconds, renewed on every append (0: no expiry)
--
-- Returns the field's new value: the JSON list after adding and trimming.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local values = {}
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then
    values = decoded
  end
end
values[#values + 1] = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local extra = #values - keep
if extra > 0 then
  local trimmed = {}
  for i = extra + 1, #values do
    trimmed[#trimmed + 1] = values[i]
  end
  values = trimmed
end
local encoded = cjson.encode(values)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return encoded

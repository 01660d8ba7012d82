-- gearsync table-wide delete (TRUNCATE / DROP TABLE of a synced table): loaded by sync/apply/truncate.py.
-- KEYS: row key, version key, per row found by SCAN. ARGV[1]: the statement's version (20 digits),
-- ARGV[2]: the tombstone TTL in ms. A row whose stored version is older than the statement's (or
-- that has none) is deleted and its version key set to the statement's version with the
-- tombstone TTL, as a row delete does; a newer row (written after the statement) stays.
-- Returns the number of row keys deleted. A version key may hold a tie-breaker and the row's fkr
-- value after the version (see apply.lua): the fkr value is kept (the row's next change leaves the
-- fk index sets it names).
local sub = string.sub
local ver = ARGV[1]
local tomb = tonumber(ARGV[2])
local removed = 0
for i = 1, #KEYS, 2 do
  local vk = KEYS[i + 1]
  local cur = redis.call('GET', vk)
  local fkr = ''
  if cur then
    local c = sub(cur, 21, 21)
    if c == '[' then fkr = sub(cur, 21) elseif #cur > 40 then fkr = sub(cur, 41) end
    if #cur < 20 or (c ~= '' and c ~= '[' and #cur < 40) or (fkr ~= '' and sub(fkr, 1, 1) ~= '[') then
      return redis.error_reply('gearsync: bad stored version at ' .. vk)
    end
  end
  -- Versions are 20-digit zero-padded decimals: as strings they compare like the numbers.
  if not cur or sub(cur, 1, 20) < ver then
    removed = removed + redis.call('DEL', KEYS[i])
    redis.call('SET', vk, ver .. fkr, 'PX', tomb)
  end
end
return removed

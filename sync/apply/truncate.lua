-- gearsync table-wide delete (TRUNCATE / DROP TABLE of a synced table): loaded by sync/apply/truncate.py.
-- KEYS: row key, version key, per row found by SCAN (with set indexes, then the row's legacy set-index
-- record key, keys.index_rows_key). ARGV[1]: the statement's version (20 digits), ARGV[2]: the
-- tombstone TTL in ms, ARGV[3]: '1' if the table has set indexes (3 keys per row), else '0', then the
-- table's zset index keys. A row whose stored version is older than the statement's (or that has
-- none) is deleted and its version key set to the statement's version with the tombstone TTL, as a
-- row delete does, and it leaves its indexes (every zset; the sets its set-index record names: the
-- version key's end after a newline, or the legacy key); a newer row (written after the statement)
-- stays, in its indexes. Returns the number of row keys deleted. A version key may hold a tie-breaker
-- and the row's fkr value after the version (see apply.lua): the fkr value is kept (the row's next
-- change leaves the fk index sets it names).
local sub = string.sub
local call = redis.call
local ver = ARGV[1]
local tomb = tonumber(ARGV[2])
local sets = ARGV[3] == '1'
local step = sets and 3 or 2
local removed = 0
for i = 1, #KEYS, step do
  local rk, vk = KEYS[i], KEYS[i + 1]
  local cur = call('GET', vk)
  local fkr, rec = '', nil
  if cur then
    local nl = string.find(cur, '\n', 21, true)
    if nl then
      rec = sub(cur, nl + 1)
      cur = sub(cur, 1, nl - 1)
    end
    local c = sub(cur, 21, 21)
    if c == '[' then fkr = sub(cur, 21) elseif #cur > 40 then fkr = sub(cur, 41) end
    if #cur < 20 or (c ~= '' and c ~= '[' and #cur < 40) or (fkr ~= '' and sub(fkr, 1, 1) ~= '[') then
      return redis.error_reply('gearsync: bad stored version at ' .. vk)
    end
  end
  -- Versions are 20-digit zero-padded decimals: as strings they compare like the numbers.
  if not cur or sub(cur, 1, 20) < ver then
    removed = removed + call('DEL', rk)
    for z = 4, #ARGV do call('ZREM', ARGV[z], rk) end
    local tail = ''
    if sets then
      if not rec then
        rec = call('GET', KEYS[i + 2])
        call('DEL', KEYS[i + 2])
      end
      if rec and rec ~= '' then
        for _, k in ipairs(cjson.decode(rec)) do call('SREM', k, rk) end
      end
      tail = '\n'
    end
    call('SET', vk, ver .. fkr .. tail, 'PX', tomb)
  end
end
return removed

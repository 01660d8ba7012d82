-- gearsync apply script: loaded by sync/apply/applier.py (SCRIPT LOAD once, then called by its SHA1).
-- Per event, ARGV[2] holds a 41-character record:
--   op (1: J json upsert, H hash upsert, D delete, C classic SET) | version (20 digits)
--   | ttl_ms (12 digits, 0 = none) | stats index (3 digits, 0 = none) | n values (5 digits)
-- KEYS: row key, version key (classic: row key twice) per event, then the stats keys.
-- ARGV[1] tombstone ms, ARGV[2] the records, ARGV[3] number of stats keys, ARGV[4..] the values.
local sub = string.sub
local tonumber = tonumber
local call = redis.call
local tomb = tonumber(ARGV[1])
local meta = ARGV[2]
local nev = #meta / 41
local nstats = tonumber(ARGV[3])
local a = 4
local out = {}
local counts = {}
for i = 0, nev - 1 do
  local m = i * 41
  local op = sub(meta, m + 1, m + 1)
  local nv = tonumber(sub(meta, m + 37, m + 41))
  local rk = KEYS[2 * i + 1]
  if op == 'C' then
    call('SET', rk, ARGV[a])
    out[i + 1] = 'A'
  else
    local ver = sub(meta, m + 2, m + 21)
    local vk = KEYS[2 * i + 2]
    local cur = call('GET', vk)
    local newer = true
    if cur then
      if cur == ver then
        newer = false
      else
        local vh, ch = tonumber(sub(ver, 1, 10)), tonumber(sub(cur, 1, 10))
        if #cur ~= 20 or ch == nil then
          return redis.error_reply('gearsync: bad stored version at ' .. vk)
        end
        if vh ~= ch then
          newer = vh > ch
        else
          newer = tonumber(sub(ver, 11, 20)) > tonumber(sub(cur, 11, 20))
        end
      end
    end
    if not newer then
      out[i + 1] = 'S'
    else
      local ttl = tonumber(sub(meta, m + 22, m + 33))
      if op == 'D' then
        call('DEL', rk)
        call('SET', vk, ver, 'PX', tomb)
      else
        if op == 'J' then
          if ttl > 0 then
            call('SET', rk, ARGV[a], 'PX', ttl)
          else
            call('SET', rk, ARGV[a])
          end
        else
          call('DEL', rk)
          local last = a + nv - 1
          local j = a
          while j <= last do
            local k = j + 999
            if k > last then k = last end
            call('HSET', rk, unpack(ARGV, j, k))
            j = k + 1
          end
          if ttl > 0 then call('PEXPIRE', rk, ttl) end
        end
        if ttl > 0 then
          call('SET', vk, ver, 'PX', math.max(ttl, tomb))
        else
          call('SET', vk, ver)
        end
      end
      out[i + 1] = 'A'
      local si = tonumber(sub(meta, m + 34, m + 36))
      if si > 0 then counts[si] = (counts[si] or 0) + 1 end
    end
  end
  a = a + nv
end
if nstats > 0 then
  local t = call('TIME')
  local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  for s = 1, nstats do
    if counts[s] then
      local sk = KEYS[2 * nev + s]
      call('HSET', sk, 'last_applied_ms', ms)
      call('HINCRBY', sk, 'applied_total', counts[s])
    end
  end
end
return table.concat(out)

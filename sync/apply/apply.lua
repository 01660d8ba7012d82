-- gearsync apply script: loaded by sync/apply/applier.py (SCRIPT LOAD once, then called by its SHA1).
-- Per event, ARGV[2] holds a 44-character record:
--   op (1: J json upsert, H hash upsert, D delete, C classic SET; j/h/d: the same, not fenced;
--   K/L/E: json upsert, hash upsert, delete with a tie-breaker: their first value is a second
--   20-digit version, stored after the version and compared after it (a late change moved by a
--   cascade record to the cascade's version keeps its own version there; a row a cascade moved to
--   a new key, the version of the change its content came from); M: SET a cascade record unless
--   one as new is there;
--   N: SET it over a newer one (an older cascade that takes its place, guarded)) | version
--   | ttl_ms (12 digits, 0 = none) | stats index (3 digits, 0 = none) | n values (5 digits)
--   | fk index (3 digits: 0 = the event keeps no fk index; else 1 + the number of fk index set keys
--   it names; 1 with an fkr value: its one set is named in that value, '[[pk columns],"<set>"]')
-- KEYS: the guard keys (ARGV[4] of them), the marker keys (ARGV[6] of them), the check keys (ARGV[5]
-- of them), then per event: row key, version key (classic: row key twice; M: the cascade record
-- key, then its marker key), and the fk index set keys it names; then the stats keys. A row's
-- legacy fkr key (keys.fk_rows_key) is ARGV[9] followed by what follows ARGV[8] in its version key.
-- ARGV[1] tombstone ms, ARGV[2] the records, ARGV[3] number of stats keys, ARGV[4] number of
-- guards, ARGV[5] number of checks, ARGV[6] number of markers, ARGV[7] one flag per marker ('1':
-- the checks of its (table, fk) are in the call, '0': they are not), ARGV[8] the version key prefix,
-- ARGV[9] the fkr key prefix, then one expected value per
-- guard ('' = absent), one version per check (20 digits), then per event its values and, with
-- index keys, its new fkr value (JSON [[pk columns], set, ...]; '' = none).
-- A version key holds the row's 20-digit version, then its tie-breaker (20 digits) if it has one,
-- then the row's fkr value if it has one (the fk index sets it is in, JSON starting with '[': the
-- fence's GET reads it too). (version, tie-breaker) compare as a pair, no tie-breaker lowest; a
-- change is applied only over an older pair (an equal one is a redelivery). j/h/d keep the stored
-- tie-breaker at an equal version. An event without an fk index keeps the stored fkr value. Written
-- by an older gearsync: 20 digits, the fkr value in its own key (keys.fk_rows_key), which the next
-- change with an fk index reads, deletes and carries over. A row of a table with set indexes
-- (shaping) has its set record last, after a newline (shaped()); every change keeps it.
-- Shaping (sync.shape: indexes, stream): the records end with 'X' and ARGV with the shape section
-- (the (shape) blocks below).
-- Guards: if any guard key does not hold its expected value (a version key: the version or '';
-- an fk index set: 'S' and its sorted members joined by newlines), nothing is written and the reply
-- is '!' (the applier re-reads and retries: sync.apply.applier, cascades).
-- Markers: a child change with refs names the marker (keys.fk_cascade_marker_key) of each of its
-- (table, fk); a marker exists while a cascade record of that (table, fk) may exist (an M record
-- sets it with the tombstone TTL: it outlives every record it covers). No marker: no record, no
-- check to make. A marker that exists while its checks are not in the call: nothing is written and
-- the reply is '#' and one '0'/'1' per marker (1: exists; the applier adds those checks, retries).
-- Checks: the cascade records (fk_cascade_key) of the refs of the changes whose markers exist; if
-- one holds a version newer than the change's, a cascade already ran past this older change:
-- nothing is written and the reply is '?' (the applier moves the change as the cascade did, and
-- retries).
local sub = string.sub
local byte = string.byte
local tonumber = tonumber
local call = redis.call
local tomb = tonumber(ARGV[1])
local meta = ARGV[2]
local nev = #meta / 44
local nstats = tonumber(ARGV[3])
local nguard = tonumber(ARGV[4])
local ncheck = tonumber(ARGV[5])
local nmark = tonumber(ARGV[6])
-- (shape) Records followed by 'X': the call has a shape section (sync.apply.applier._shape_tail).
-- Its descriptor sd, the last ARGV: the ARGV index of its first value (10 digits), the number of
-- shaped tables in the call (3 digits), where their part starts (7 digits, from the section's
-- start), then 15 characters per record: its table's number (3 digits,
-- 000 = none), z ('1': one value per zset index of the table), s ('1': the table has set indexes),
-- ns (the number of sets the row is in; 'r': one, named in its record, '["<set>"]'), x (stream: 0
-- none, 1 the row is the json value stored, 2 the row is given, 3 no row; a, b, c: the same with
-- the pk built from the row key, not given), o (op: i, u, d), the
-- ARGV index of its first value (7 digits, from the section's start). The section's values: the
-- legacy set-record key prefix (keys.index_rows_prefix), per record its values (shaped()), then
-- per table: its number of zset indexes, their keys, its stream key ('' = none), MAXLEN, and for
-- a pk built from the row key its JSON up to the value ('{"id":') and where the value starts in a
-- row key (1-based; '' and 0: none).
local sd = false
local sbase, ixp, tabs = 0, '', {}
if #meta % 44 == 1 then
  nev = (#meta - 1) / 44
  sd = ARGV[#ARGV]
  sbase = tonumber(sub(sd, 1, 10))
  ixp = ARGV[sbase]
  local at = sbase + tonumber(sub(sd, 14, 20))
  for t = 1, tonumber(sub(sd, 11, 13)) do
    local nz = tonumber(ARGV[at])
    -- nz, its first zset key, stream, maxlen, the stream pk's JSON head and where its value starts
    -- in a row key (stream flags a, b, c)
    tabs[t] = {nz, at + 1, ARGV[at + nz + 1], ARGV[at + nz + 2], ARGV[at + nz + 3], tonumber(ARGV[at + nz + 4])}
    -- the ZADDs wait to the end (zq): a zset key of another type fails the call before any write
    for z = at + 1, at + nz do
      local ty = call('TYPE', ARGV[z])['ok']
      if ty ~= 'zset' and ty ~= 'none' then
        return redis.error_reply('WRONGTYPE gearsync: the zset index ' .. ARGV[z] .. ' holds a ' .. ty)
      end
    end
    at = at + nz + 5
  end
end
for g = 1, nguard do
  local want = ARGV[9 + g]
  if sub(want, 1, 1) == 'S' then
    -- an fk index set the cascade read: 'S' .. its members, sorted, joined by newlines
    local members = call('SMEMBERS', KEYS[g])
    table.sort(members)
    if 'S' .. table.concat(members, '\n') ~= want then return '!' end
  elseif (call('GET', KEYS[g]) or '') ~= want then
    return '!'
  end
end
if nmark > 0 then
  local flags = ARGV[7]
  local live, any, missing = {}, false, false
  for k = 1, nmark do
    if call('EXISTS', KEYS[nguard + k]) == 1 then
      live[k] = '1'
      any = true
      if sub(flags, k, k) ~= '1' then missing = true end
    else
      live[k] = '0'
    end
  end
  if missing then return '#' .. table.concat(live) end
  if any then
    for c = 1, ncheck do
      local rec = call('GET', KEYS[nguard + nmark + c])
      if rec and sub(rec, 1, 20) > ARGV[9 + nguard + c] then return '?' end
    end
  end
end
local a = 10 + nguard + ncheck
local vpl = #ARGV[8] + 1
local fkrp = ARGV[9]
local kp = nguard + nmark + ncheck
-- SET a row's companion key (version, fkr): with a TTL'd row it expires after max(ttl, tombstone).
local function setx(key, val, ttl)
  if ttl > 0 then
    call('SET', key, val, 'PX', math.max(ttl, tomb))
  else
    call('SET', key, val)
  end
end
local function unindex(rk, old)
  local sets = cjson.decode(old)
  for j = 2, #sets do call('SREM', sets[j], rk) end
end
-- (shape) A record's secondary indexes and stream entry, written in the same call as its row, once
-- its fence passed (a stale change never gets here), before its version key; m: where its part
-- of the descriptor sd starts, tab: its table. Its values: with z, one per zset index of its
-- table: the score to ZADD (zq), '' ZREM, '~' leave it; with set indexes, its new set record (JSON
-- list of set keys, '' = none) and its ns sets: on a change SREM from the old sets, SADD to the
-- new; with a stream, the pk (JSON) [and the row, x = 2]: XADD op key pk version [row] (trimmed
-- in finish()).
-- The set record lives at the end of the version key, after a newline (`tail`: '\n' .. record,
-- '' = none there): the fence's GET read it. A version key without one, written before the record
-- moved there, has it in the legacy key (keys.index_rows_key), read once and deleted (no version
-- key: no record). Returns the version key's new tail.
local opname = {[105] = 'insert', [117] = 'update', [100] = 'delete'}  -- by the op's byte (i, u, d)
local match = string.match
-- (shape) ZADDs wait in zq (zset key's ARGV index -> score, member, ...) and go as one ZADD per
-- zset key: at a ZREM of that key (first), past 1000 members, and in finish(). Nothing in the
-- script reads a zset, so the zsets end as if each ZADD had run in its place. A stream is trimmed
-- (XTRIM MAXLEN ~) once, in finish(), not by each XADD: the call is atomic, so no reader sees it
-- longer; xt: the tables whose streams got entries.
local zq, zn, xt = {}, {}, {}
local function zflush(ki)
  local q = zq[ki]
  if q and zn[ki] > 0 then
    call('ZADD', ARGV[ki], unpack(q, 1, zn[ki]))
    zn[ki] = 0
  end
end
-- before the reply (an error reply too): the waiting ZADDs, then the streams' trims
local function finish()
  for ki in pairs(zq) do zflush(ki) end
  for tab in pairs(xt) do call('XTRIM', tab[3], 'MAXLEN', '~', tab[4]) end
end
local function shaped(m, tab, rk, vk, ver, row, tail, cur)
  local at = sbase + tonumber(sub(sd, m + 8, m + 14))
  if byte(sd, m + 3) == 49 then  -- z '1'
    local zk = tab[2]
    for j = 0, tab[1] - 1 do
      local v = ARGV[at + j]
      local ki = zk + j
      if v == '' then
        zflush(ki)
        call('ZREM', ARGV[ki], rk)
      elseif v ~= '~' then
        local q, n = zq[ki], zn[ki]
        if not q then
          q, n = {}, 0
          zq[ki] = q
        end
        q[n + 1] = v
        q[n + 2] = rk
        zn[ki] = n + 2
        if n >= 1998 then zflush(ki) end
      end
    end
    at = at + tab[1]
  end
  if byte(sd, m + 4) == 49 then  -- s '1'
    local ns = byte(sd, m + 5) - 48  -- 'r': -1
    if ns == 66 then ns = -1 end
    local new = ARGV[at]
    local old = ''
    if tail ~= '' then
      old = sub(tail, 2)
    elseif cur then
      local ix = ixp .. sub(vk, vpl)
      old = call('GET', ix) or ''
      if old ~= '' then call('DEL', ix) end
    end
    if old ~= new then
      if old ~= '' then for _, k in ipairs(cjson.decode(old)) do call('SREM', k, rk) end end
      if ns < 0 then
        call('SADD', sub(new, 3, -3), rk)
      else
        for j = at + 1, at + ns do call('SADD', ARGV[j], rk) end
      end
    end
    tail = '\n' .. new
    at = at + 1
    if ns > 0 then at = at + ns end
  end
  local x = byte(sd, m + 6) - 48
  if x ~= 0 then
    local v = match(ver, '^0*(%d.*)$')
    local pk
    if x > 9 then  -- a, b, c: as 1, 2, 3, the pk built from the row key (one integer column)
      x = x - 48
      pk = tab[5] .. sub(rk, tab[6]) .. '}'
    else
      pk = ARGV[at]
      at = at + 1
    end
    if x == 2 then row = ARGV[at] end
    local op = opname[byte(sd, m + 7)]
    if x ~= 3 and row then
      call('XADD', tab[3], '*', 'op', op, 'key', rk, 'pk', pk, 'version', v, 'row', row)
    else
      call('XADD', tab[3], '*', 'op', op, 'key', rk, 'pk', pk, 'version', v)
    end
    xt[tab] = true
  end
  return tail
end
local out = {}
local counts = {}
-- the records; a failed command (e.g. WRONGTYPE) ends the call as it always did, after finish():
-- the writes made before it keep their waiting ZADDs (a retry finds those records stale)
local function records()
  for i = 0, nev - 1 do
    local m = i * 44
    local op = sub(meta, m + 1, m + 1)
    -- j/h/d: a cascade's derived change, guarded instead of fenced (version = max(parent's, child's))
    local force = op == 'j' or op == 'h' or op == 'd'
    if force then op = string.upper(op) end
    local tie = ''
    if op == 'K' or op == 'L' or op == 'E' then
      op = (op == 'K' and 'J') or (op == 'L' and 'H') or 'D'
      tie = ARGV[a]
      a = a + 1
    end
    local nv = tonumber(sub(meta, m + 37, m + 41))
    local nidx = tonumber(sub(meta, m + 42, m + 44))
    local rk = KEYS[kp + 1]
    if op == 'C' then
      call('SET', rk, ARGV[a])
      out[i + 1] = 'A'
    elseif op == 'M' or op == 'N' then
      local ver = sub(meta, m + 2, m + 21)
      local cur = op == 'M' and call('GET', rk)
      if not cur or sub(cur, 1, 20) < ver then
        call('SET', rk, ver .. ARGV[a], 'PX', tomb)
        call('SET', KEYS[kp + 2], '1', 'PX', tomb)  -- its marker outlives it
      end
      out[i + 1] = 'A'
    else
      local ver = sub(meta, m + 2, m + 21)
      local vk = KEYS[kp + 2]
      local cur = call('GET', vk)
      local newer = true
      -- the stored version (cv), tie-breaker (ctie, '' = none) and fkr value (old, nil = none)
      local cv, ctie, old = nil, '', nil
      -- (shape) the set record after a newline ('\n' .. record; '' = none)
      local tail = ''
      if cur then
        local nl = string.find(cur, '\n', 21, true)
        if nl then
          tail = sub(cur, nl)
          cur = sub(cur, 1, nl - 1)
        end
        cv = sub(cur, 1, 20)
        local c = sub(cur, 21, 21)
        if c == '[' then
          old = sub(cur, 21)
        elseif c ~= '' then
          ctie = sub(cur, 21, 40)
          if #cur > 40 then old = sub(cur, 41) end
        end
        if #cv ~= 20 or tonumber(sub(cv, 1, 10)) == nil or (c ~= '[' and c ~= '' and #ctie ~= 20)
            or (old and sub(old, 1, 1) ~= '[') then
          return redis.error_reply('gearsync: bad stored version at ' .. vk)
        end
      end
      if cur and force then
        if cv == ver then tie = ctie end
      elseif cur then
        if cv == ver then
          newer = tie > ctie
        else
          local vh, ch = tonumber(sub(ver, 1, 10)), tonumber(sub(cv, 1, 10))
          if vh ~= ch then
            newer = vh > ch
          else
            newer = tonumber(sub(ver, 11, 20)) > tonumber(sub(cv, 11, 20))
          end
        end
      end
      if not newer then
        out[i + 1] = 'S'
      else
        local ttl = tonumber(sub(meta, m + 22, m + 33))
        -- the fkr value to keep after the version: an event without an fk index leaves it as it is
        local keep = old or ''
        if nidx > 0 then
          if cur and not old then
            -- written before the fkr value moved into the version key: its own key (keys.fk_rows_key,
            -- tagged like vk), read once, then deleted
            local fkr
            if #vk == vpl + #rk + 1 then fkr = fkrp .. '{' .. rk .. '}' else fkr = fkrp .. rk end
            old = call('GET', fkr)
            if old then call('DEL', fkr) end
          end
          local new = ARGV[a + nv]
          if op == 'D' then
            if old then unindex(rk, old) end
            keep = ''
          else
            if old ~= new then
              if old then unindex(rk, old) end
              if nidx > 1 then
                for j = kp + 3, kp + 1 + nidx do call('SADD', KEYS[j], rk) end
              elseif new ~= '' then
                call('SADD', sub(new, string.find(new, '],"', 1, true) + 3, -3), rk)
              end
            end
            keep = new
          end
        end
        if sd then
          local m = 21 + 15 * i
          local t1, t2, t3 = byte(sd, m, m + 2)
          local tn = t1 * 100 + t2 * 10 + t3 - 5328  -- 3 digits (5328 = 111 * 48)
          if tn > 0 then tail = shaped(m, tabs[tn], rk, vk, ver, op == 'J' and ARGV[a], tail, cur) end
        end
        if op == 'D' then
          call('DEL', rk)
          call('SET', vk, ver .. tie .. keep .. tail, 'PX', tomb)
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
          setx(vk, ver .. tie .. keep .. tail, ttl)
        end
        out[i + 1] = 'A'
        local si = tonumber(sub(meta, m + 34, m + 36))
        if si > 0 then counts[si] = (counts[si] or 0) + 1 end
      end
    end
    a = a + nv
    kp = kp + 2
    if nidx > 0 then
      a = a + 1
      kp = kp + nidx - 1
    end
  end
end
local ok, err = pcall(records)
finish()
if not ok then error(err, 0) end
if err then return err end
if nstats > 0 then
  local t = call('TIME')
  local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  for s = 1, nstats do
    if counts[s] then
      local sk = KEYS[kp + s]
      call('HSET', sk, 'last_applied_ms', ms)
      call('HINCRBY', sk, 'applied_total', counts[s])
    end
  end
end
return table.concat(out)

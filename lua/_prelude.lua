--[[
  Shared definitions, prepended to every script in this folder by
  service/scripts.py before the script is registered with Redis.

  Every script gets the same KEYS, the keys of one user, all sharing the
  user's hash tag {tag}:
    KEYS[1]  <p>{tag}:i    sorted set  user index: sid -> last activity (ms)
    KEYS[2]  <p>{tag}:d    hash        device registry: device id -> entry
    KEYS[3]  <p>{tag}:s    hash        session records: sid -> record
    KEYS[4]  <p>{tag}:x    hash        ended-session markers: sid -> marker
    KEYS[5]  <p>{tag}:e    list        the user's events; also the pub/sub
                                       channel that announces new ones
    KEYS[6]  <p>{tag}:c    string      session creations in the current minute
    KEYS[7]  <p>{tag}:f:   prefix      wrong-secret counter key = KEYS[7] .. sid
  A script touches no other key: on Redis Cluster every key is declared,
  so a slot being migrated answers ASK or TRYAGAIN instead of letting a
  script see half of a user's keys.

  And the same first ARGV:
    ARGV[1]  grace_ms              an expired record is kept this long, ms
    ARGV[2]  events_max_length     cap of the user's event list
    ARGV[3]  events_retention_ms   the list expires this long after its last event
    ARGV[4]  device_retention_ms   the registry expires this long after its last write
  Script-specific arguments start at ARGV[5].

  Session record: a MessagePack array, one field of the user's sessions
  hash. The F_* locals name its positions; service/records.py decodes the same layout.
  Every time is integer milliseconds since the Unix epoch, read from the
  Redis server's clock.

  Every reply is {status, events, ...}: status is one of the codes below
  (service/scripts.py names them) and events lists what the script added
  to the user's event list, as {id, type, user_id, sid, device_id,
  detail_json}; the list itself does not repeat the user id.
]]
local F_SECRET_HASH = 1
local F_USER_ID = 2
local F_DEVICE_ID = 3
local F_DEVICE_TYPE = 4
local F_DEVICE_NAME = 5
local F_CREATED_MS = 6
local F_EXPIRES_MS = 7
local F_MAX_EXPIRES_MS = 8
local F_WINDOW_MS = 9
local F_EXTEND = 10
local F_POLICY = 11
local F_LAST_ACTIVE_MS = 12
local F_CLIENT_IP = 13
local F_USER_AGENT = 14
local F_METADATA = 15
local F_TRUSTED = 16
-- Client network at sign-in: IPv4 /24 or IPv6 /48 as text, '' if unknown.
local F_CLIENT_NET = 17
-- The policy's anomaly actions, one letter each ('n'one, 'r'eauth,
-- re'v'oke): context change, invalid secret, revoked token used.
local F_ACTIONS = 18
-- Bit set of FLAG_* below.
local F_FLAGS = 19

local FLAG_REAUTH = 1
local FLAG_REQUIRES_TRUST = 2
local FLAG_CONTEXT_REPORTED = 4

-- Device registry entry: MessagePack array, field of the <p>{tag}:d hash.
local D_SESSION_ID = 1
local D_TYPE = 2
local D_NAME = 3
local D_FIRST_SEEN_MS = 4
local D_LAST_SEEN_MS = 5
local D_TRUSTED = 6

-- Session marker: MessagePack array, field of the <p>{tag}:x hash. It
-- outlives the record until the session's max_expires_at, so a token of
-- an ended session gets session_revoked or session_expired, not
-- invalid_token. Written at creation with state MARKER_LIVE (record gone
-- means expired), switched to MARKER_REVOKED when the session is ended.
local M_SECRET_HASH = 1
local M_STATE = 2
local M_REUSE_ACTION = 3
local M_USER_ID = 4
local M_DEVICE_ID = 5
local M_UNTIL_MS = 6

local MARKER_LIVE = 'l'
local MARKER_REVOKED = 'r'
-- Markers kept per user at most; the ones ending soonest go first.
local MAX_MARKERS = 1024
-- Markers are pruned once a user has more than this many.
local PRUNE_MARKERS_ABOVE = 64

-- Status codes in position 1 of every reply.
local OK = 0
local INVALID_TOKEN = 1
local EXPIRED = 2
local REVOKED = 3
local REAUTH_REQUIRED = 4
local NOT_FOUND = 5
local LIMIT_REACHED = 6
local DEVICE_NOT_TRUSTED = 7
local ID_COLLISION = 8
local RATE_LIMITED = 9

local k = {
  index = KEYS[1], devices = KEYS[2], sessions = KEYS[3], markers = KEYS[4],
  events = KEYS[5], creations = KEYS[6], failures_prefix = KEYS[7],
}
-- The user's tag, between the braces of every key; "sess_" .. tag .. sid
-- is a session id as the API shows it.
local user_tag = string.match(k.index, '{(.-)}')
local grace_ms = tonumber(ARGV[1])
local events_max_length = tonumber(ARGV[2])
local events_retention_ms = tonumber(ARGV[3])
local device_retention_ms = tonumber(ARGV[4])

local emitted = {}

local function server_time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function has_flag(record, flag)
  return bit.band(record[F_FLAGS], flag) ~= 0
end

local function with_flag(record, flag)
  record[F_FLAGS] = bit.bor(record[F_FLAGS], flag)
end

--[[
  Append an event to the user's list, trimmed to events_max_length
  entries, and announce its id on the channel named like the list.
  An entry is "<id> <MessagePack {type, sid, device_id, detail_json}>".
  The id is "<ms>-<n>": the Redis time in ms, so it doubles as the event
  time, and n orders events within one ms. Ids only grow, even if the
  server clock steps back. A list, not a stream: an empty Redis stream
  already costs about 4.7 KB, a short list about 100 bytes.
]]
local function emit(event_type, user_id, sid, device_id, detail_json)
  local at_ms = server_time_ms()
  local seq = 0
  local last = redis.call('LINDEX', k.events, -1)
  if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+) ')
    last_ms = tonumber(last_ms)
    if last_ms >= at_ms then
      at_ms, seq = last_ms, tonumber(last_seq) + 1
    end
  end

  local id = string.format('%d-%d', at_ms, seq)
  redis.call('RPUSH', k.events, id .. ' ' .. cmsgpack.pack({event_type, sid, device_id, detail_json}))
  redis.call('LTRIM', k.events, -events_max_length, -1)
  redis.call('PEXPIRE', k.events, events_retention_ms)
  redis.call('PUBLISH', k.events, id)
  emitted[#emitted + 1] = {id, event_type, user_id, sid, device_id, detail_json}
end

local function reply(status, ...)
  return {status, emitted, ...}
end

-- Every script judges expiry against this one reading of the server clock.
local now_ms = server_time_ms()

local function read_record(sid)
  local raw = redis.call('HGET', k.sessions, sid)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

-- Push a key's expiry out to at_ms, never pull it in: several sessions
-- share the user index, and it must outlive the longest of them.
local function expire_not_before(key, at_ms, now_ms)
  local ttl_ms = redis.call('PTTL', key)
  if ttl_ms < 0 or now_ms + ttl_ms < at_ms then
    redis.call('PEXPIREAT', key, at_ms)
  end
end

-- The sessions hash outlives the latest expires_at among its records by
-- grace_ms; records of expired sessions are dropped as they are noticed.
local function write_record(sid, record)
  local raw = cmsgpack.pack(record)
  redis.call('HSET', k.sessions, sid, raw)
  expire_not_before(k.sessions, record[F_EXPIRES_MS] + grace_ms, now_ms)
  return raw
end

local function read_device(device_id)
  local raw = redis.call('HGET', k.devices, device_id)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

local function write_device(device_id, device)
  redis.call('HSET', k.devices, device_id, cmsgpack.pack(device))
  redis.call('PEXPIRE', k.devices, device_retention_ms)
end

local function write_marker(sid, record, state, now_ms)
  local max_expires_ms = record[F_MAX_EXPIRES_MS]
  redis.call('HSET', k.markers, sid, cmsgpack.pack({
    record[F_SECRET_HASH], state, string.sub(record[F_ACTIONS], 3, 3), record[F_USER_ID],
    record[F_DEVICE_ID], max_expires_ms}))
  expire_not_before(k.markers, max_expires_ms, now_ms)
end

local function read_marker(sid)
  local raw = redis.call('HGET', k.markers, sid)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

--[[
  Drop markers past their session's max_expires_at, and beyond MAX_MARKERS
  the ones that end soonest. Runs only above PRUNE_MARKERS_ABOVE markers,
  so a user with few sessions never pays for the scan.
]]
local function prune_markers(now_ms)
  if redis.call('HLEN', k.markers) <= PRUNE_MARKERS_ABOVE then
    return
  end
  local kept = {}
  local entries = redis.call('HGETALL', k.markers)
  for i = 1, #entries, 2 do
    local until_ms = cmsgpack.unpack(entries[i + 1])[M_UNTIL_MS]
    if until_ms <= now_ms then
      redis.call('HDEL', k.markers, entries[i])
    else
      kept[#kept + 1] = {entries[i], until_ms}
    end
  end
  if #kept > MAX_MARKERS then
    table.sort(kept, function(a, b) return a[2] < b[2] end)
    for i = 1, #kept - MAX_MARKERS do
      redis.call('HDEL', k.markers, kept[i][1])
    end
  end
end

--[[
  End one session: delete its record and index entry, detach it from its
  device, mark it revoked until its absolute end (so a replayed token
  gets session_revoked) and emit event_type.
]]
local function end_session(sid, record, now_ms, event_type, detail_json)
  redis.call('HDEL', k.sessions, sid)
  redis.call('DEL', k.failures_prefix .. sid)
  redis.call('ZREM', k.index, sid)

  local device_id = record[F_DEVICE_ID]
  local device = read_device(device_id)
  if device and device[D_SESSION_ID] == sid then
    device[D_SESSION_ID] = ''
    redis.call('HSET', k.devices, device_id, cmsgpack.pack(device))
  end

  if record[F_MAX_EXPIRES_MS] > now_ms then
    write_marker(sid, record, MARKER_REVOKED, now_ms)
  end
  emit(event_type, record[F_USER_ID], sid, device_id, detail_json or '{}')
end

-- Remove an expired session from the index; the first removal is the
-- moment expiry is observed, so it emits session_expired exactly once.
local function note_expired(sid, record)
  if redis.call('ZREM', k.index, sid) == 1 then
    local reason = record[F_EXPIRES_MS] >= record[F_MAX_EXPIRES_MS] and 'max_lifetime' or 'idle'
    emit('session_expired', record[F_USER_ID], sid, record[F_DEVICE_ID], '{"reason":"' .. reason .. '"}')
  end
end

-- The record expired and its TTL ran out before anyone noticed: the
-- marker still knows the session, so the expiry is reported now.
local function note_record_gone(sid)
  if redis.call('ZREM', k.index, sid) == 1 then
    local marker = read_marker(sid)
    if marker and marker[M_STATE] == MARKER_LIVE then
      emit('session_expired', marker[M_USER_ID], sid, marker[M_DEVICE_ID], '{"reason":"idle"}')
    end
  end
end

--[[
  Return the user's live sessions as {sid, record, last_active_ms},
  least recently active first, and drop index entries of sessions that expired or are
  gone. An expired record itself stays until its own TTL.
]]
local function live_sessions(user_id, now_ms)
  local live = {}
  local entries = redis.call('ZRANGE', k.index, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local sid = entries[i]
    local record = read_record(sid)
    if not record then
      note_record_gone(sid)
    elseif record[F_USER_ID] == user_id then
      if record[F_EXPIRES_MS] > now_ms then
        live[#live + 1] = {sid, record, tonumber(entries[i + 1])}
      else
        note_expired(sid, record)
        if record[F_EXPIRES_MS] + grace_ms <= now_ms then
          redis.call('HDEL', k.sessions, sid)
        end
      end
    end
  end
  return live
end

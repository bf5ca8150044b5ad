--[[
  Shared definitions, prepended to every script in this folder by
  service/scripts.py before the script is registered with Redis.

  Session record: a MessagePack array kept as a Redis string under
  <prefix>{<user tag>}:s:<sid>. The F_* locals below name its positions;
  service/records.py decodes the same layout. Every time is integer
  milliseconds since the Unix epoch, read from the Redis server's clock.

  Every key a script touches carries the user's hash tag, either passed
  whole in KEYS or built as KEYS[i] .. sid where KEYS[i] is a key prefix
  that ends after the tag. A built key therefore always hashes to the
  slot of the keys the script was routed by.
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

-- Device registry entry: MessagePack array, field of the <prefix>{tag}:d hash.
local D_SESSION_ID = 1
local D_TYPE = 2
local D_NAME = 3
local D_FIRST_SEEN_MS = 4
local D_LAST_SEEN_MS = 5
local D_TRUSTED = 6

-- Status codes in position 1 of every reply; service/scripts.py names them.
local OK = 0
local INVALID_TOKEN = 1
local EXPIRED = 2
local REVOKED = 3
local NOT_FOUND = 5
local LIMIT_REACHED = 6
local DEVICE_NOT_TRUSTED = 7
local ID_COLLISION = 8

local function server_time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function read_record(key)
  local raw = redis.call('GET', key)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

-- The record outlives expires_at by grace_ms, so that an expired token
-- still gets session_expired for a while instead of invalid_token.
local function write_record(key, record, grace_ms)
  redis.call('SET', key, cmsgpack.pack(record), 'PXAT', record[F_EXPIRES_MS] + grace_ms)
end

-- Push a key's expiry out to at_ms, never pull it in: several sessions
-- share the user index, and it must outlive the longest of them.
local function expire_not_before(key, at_ms, now_ms)
  local ttl_ms = redis.call('PTTL', key)
  if ttl_ms < 0 or now_ms + ttl_ms < at_ms then
    redis.call('PEXPIREAT', key, at_ms)
  end
end

local function read_device(devices_key, device_id)
  local raw = redis.call('HGET', devices_key, device_id)
  if not raw then
    return nil
  end
  return cmsgpack.unpack(raw)
end

local function write_device(devices_key, device_id, device, retention_ms)
  redis.call('HSET', devices_key, device_id, cmsgpack.pack(device))
  redis.call('PEXPIRE', devices_key, retention_ms)
end

--[[
  End one session: delete its record and index entry, detach it from its
  device and leave a revocation marker (the secret hash) until the
  session's absolute end, so a replayed token gets session_revoked.
]]
local function end_session(k, sid, record, now_ms)
  redis.call('DEL', k.session_prefix .. sid)
  redis.call('ZREM', k.index, sid)

  local device_id = record[F_DEVICE_ID]
  local device = read_device(k.devices, device_id)
  if device and device[D_SESSION_ID] == sid then
    device[D_SESSION_ID] = ''
    redis.call('HSET', k.devices, device_id, cmsgpack.pack(device))
  end

  local max_expires_ms = record[F_MAX_EXPIRES_MS]
  if max_expires_ms > now_ms then
    redis.call('SET', k.marker_prefix .. sid, record[F_SECRET_HASH], 'PXAT', max_expires_ms)
  end
end

--[[
  Return the user's live sessions as {sid, record} pairs, least recently
  active first, and drop index entries whose record expired or is gone.
  An expired record itself stays until its own TTL, for session_expired.
]]
local function live_sessions(k, user_id, now_ms)
  local live = {}
  local sids = redis.call('ZRANGE', k.index, 0, -1)
  for _, sid in ipairs(sids) do
    local record = read_record(k.session_prefix .. sid)
    if record and record[F_EXPIRES_MS] > now_ms and record[F_USER_ID] == user_id then
      live[#live + 1] = {sid, record}
    elseif not record or record[F_USER_ID] == user_id then
      redis.call('ZREM', k.index, sid)
    end
  end
  return live
end

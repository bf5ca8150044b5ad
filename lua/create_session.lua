--[[
  Create a session for one device of a user, replacing the device's
  earlier session and applying the per-user concurrent session limit.
  Atomically: a user never holds more than max_sessions live sessions,
  and never more than one live session per device id.

  KEYS[1]  <p>{tag}:i   sorted set  user index: sid -> last activity (ms)
  KEYS[2]  <p>{tag}:d   hash        device registry: device id -> entry
  KEYS[3]  <p>{tag}:s:  prefix      session record key = KEYS[3] .. sid
  KEYS[4]  <p>{tag}:r:  prefix      revocation marker key = KEYS[4] .. sid
  Every key shares the user's hash tag {tag}.

  ARGV[1]  sid                 new session's id within the user, 8 chars
  ARGV[2]  secret_hash         first 16 bytes of SHA-256(secret), raw
  ARGV[3]  user_id
  ARGV[4]  device_id
  ARGV[5]  device_type         '' when not given
  ARGV[6]  device_name         '' when not given
  ARGV[7]  window_ms           sliding window (expires_in), ms
  ARGV[8]  max_lifetime_ms     absolute lifetime from creation, ms
  ARGV[9]  extend_on_activity  '1' or '0'
  ARGV[10] policy              policy name
  ARGV[11] client_ip           '' when not given
  ARGV[12] user_agent          '' when not given
  ARGV[13] metadata            JSON text
  ARGV[14] max_sessions        integer >= 1
  ARGV[15] on_limit            'evict_oldest' or 'reject'
  ARGV[16] grace_ms            how long an expired record is kept, ms
  ARGV[17] device_retention_ms how long the registry remembers devices, ms
  ARGV[18] requires_trusted    '1' when the policy needs a trusted device

  Returns  {OK, created_ms, expires_ms, max_expires_ms, trusted,
            replaced_sid or '', evicted_sid...}
           {LIMIT_REACHED, live_count}   on_limit is reject and the user is full
           {DEVICE_NOT_TRUSTED}          policy needs trust, device lacks it
           {ID_COLLISION}                sid already used; retry with another
  Writes   the record (PXAT expires + grace), the index (PEXPIREAT at least
           expires + grace), the device entry (PEXPIRE device retention);
           ends replaced and evicted sessions. Time from redis.call('TIME').
]]
local k = {index = KEYS[1], devices = KEYS[2], session_prefix = KEYS[3], marker_prefix = KEYS[4]}
local sid = ARGV[1]
local secret_hash = ARGV[2]
local user_id = ARGV[3]
local device_id = ARGV[4]
local device_type = ARGV[5]
local device_name = ARGV[6]
local window_ms = tonumber(ARGV[7])
local max_lifetime_ms = tonumber(ARGV[8])
local extend = tonumber(ARGV[9])
local policy = ARGV[10]
local client_ip = ARGV[11]
local user_agent = ARGV[12]
local metadata = ARGV[13]
local max_sessions = tonumber(ARGV[14])
local on_limit = ARGV[15]
local grace_ms = tonumber(ARGV[16])
local device_retention_ms = tonumber(ARGV[17])
local requires_trusted = ARGV[18] == '1'

local now_ms = server_time_ms()
if redis.call('EXISTS', k.session_prefix .. sid) == 1 or
   redis.call('EXISTS', k.marker_prefix .. sid) == 1 then
  return {ID_COLLISION}
end

local device = read_device(k.devices, device_id)
local trusted = device and device[D_TRUSTED] or 0
if requires_trusted and trusted ~= 1 then
  return {DEVICE_NOT_TRUSTED}
end

-- Decide everything before the first write, so a rejected request
-- changes nothing.
local live = live_sessions(k, user_id, now_ms)
local replaced = nil
local others = {}
for _, entry in ipairs(live) do
  if entry[2][F_DEVICE_ID] == device_id then
    replaced = entry
  else
    others[#others + 1] = entry
  end
end

local excess = #others + 1 - max_sessions
if excess > 0 and on_limit == 'reject' then
  return {LIMIT_REACHED, #others}
end

local reply = {OK, now_ms, 0, 0, trusted, ''}
if replaced then
  end_session(k, replaced[1], replaced[2], now_ms)
  reply[6] = replaced[1]
end
-- others is ordered least recently active first.
for i = 1, math.max(excess, 0) do
  end_session(k, others[i][1], others[i][2], now_ms)
  reply[#reply + 1] = others[i][1]
end

local max_expires_ms = now_ms + max_lifetime_ms
local expires_ms = math.min(now_ms + window_ms, max_expires_ms)
local record = {secret_hash, user_id, device_id, device_type, device_name,
                now_ms, expires_ms, max_expires_ms, window_ms, extend, policy,
                now_ms, client_ip, user_agent, metadata, trusted}
write_record(k.session_prefix .. sid, record, grace_ms)
redis.call('ZADD', k.index, now_ms, sid)
expire_not_before(k.index, expires_ms + grace_ms, now_ms)

local first_seen_ms = device and device[D_FIRST_SEEN_MS] or now_ms
write_device(k.devices, device_id,
             {sid, device_type, device_name, first_seen_ms, now_ms, trusted},
             device_retention_ms)

reply[3] = expires_ms
reply[4] = max_expires_ms
return reply

--[[
  Create a session for one device of a user, replacing the device's
  earlier session and applying the per-user concurrent session limit and
  creation rate limit.
  Atomically: a user never holds more than max_sessions live sessions,
  and never more than one live session per device id.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  sid                  new session's id within the user, 8 chars
  ARGV[6]  secret_hash          first 16 bytes of SHA-256(secret), raw
  ARGV[7]  user_id
  ARGV[8]  device_id
  ARGV[9]  device_type          '' when not given
  ARGV[10] device_name          '' when not given
  ARGV[11] window_ms            sliding window (expires_in), ms
  ARGV[12] max_lifetime_ms      absolute lifetime from creation, ms
  ARGV[13] extend_on_activity   '1' or '0'
  ARGV[14] policy               policy name
  ARGV[15] client_ip            '' when not given
  ARGV[16] client_net           IPv4 /24 or IPv6 /48 of client_ip, '' when not given
  ARGV[17] user_agent           '' when not given
  ARGV[18] metadata             JSON text
  ARGV[19] max_sessions         integer >= 1
  ARGV[20] on_limit             'evict_oldest' or 'reject'
  ARGV[21] requires_trusted     '1' when the policy needs a trusted device
  ARGV[22] actions              three letters, see F_ACTIONS
  ARGV[23] max_creates_per_minute

  Returns  {OK, events, created_ms, expires_ms, max_expires_ms, trusted,
            replaced_sid or '', evicted_sid...}
           {LIMIT_REACHED, events, live_count}  on_limit is reject, user is full
           {DEVICE_NOT_TRUSTED, events}         policy needs trust, device lacks it
           {RATE_LIMITED, events, retry_after_ms}  too many creations this minute
           {ID_COLLISION, events}               sid already used; retry with another
  Writes   the record (the sessions hash and the index expire no earlier
           than expires + grace), the session's marker, the device entry, the
           creation counter (60 s window); ends replaced and evicted
           sessions; emits
           session_created, session_replaced, session_evicted, new_device,
           creation_burst. Time from redis.call('TIME').
]]
local sid = ARGV[5]
local secret_hash = ARGV[6]
local user_id = ARGV[7]
local device_id = ARGV[8]
local device_type = ARGV[9]
local device_name = ARGV[10]
local window_ms = tonumber(ARGV[11])
local max_lifetime_ms = tonumber(ARGV[12])
local extend = tonumber(ARGV[13])
local policy = ARGV[14]
local client_ip = ARGV[15]
local client_net = ARGV[16]
local user_agent = ARGV[17]
local metadata = ARGV[18]
local max_sessions = tonumber(ARGV[19])
local on_limit = ARGV[20]
local requires_trusted = ARGV[21] == '1'
local actions = ARGV[22]
local max_creates_per_minute = tonumber(ARGV[23])

if redis.call('HEXISTS', k.sessions, sid) == 1 or redis.call('HEXISTS', k.markers, sid) == 1 then
  return reply(ID_COLLISION)
end

-- Fixed one-minute window per user; every attempt counts, accepted or not.
local creations = redis.call('INCR', k.creations)
if creations == 1 then
  redis.call('PEXPIRE', k.creations, 60000)
end
if creations > max_creates_per_minute then
  if creations == max_creates_per_minute + 1 then
    emit('creation_burst', user_id, '', device_id, '{"limit":' .. max_creates_per_minute .. '}')
  end
  return reply(RATE_LIMITED, math.max(redis.call('PTTL', k.creations), 1))
end

local device = read_device(device_id)
local trusted = device and device[D_TRUSTED] or 0
if requires_trusted and trusted ~= 1 then
  return reply(DEVICE_NOT_TRUSTED)
end

-- Decide everything before the first write to a session, so a rejected
-- request changes nothing but the creation counter.
local live = live_sessions(user_id, now_ms)
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
  return reply(LIMIT_REACHED, #others)
end

local replaced_sid = ''
local detail = '{"by":"sess_' .. user_tag .. sid .. '"}'
if replaced then
  replaced_sid = replaced[1]
  end_session(replaced_sid, replaced[2], now_ms, 'session_replaced', detail)
end
local out = reply(OK, now_ms, 0, 0, 0, '')
-- others is ordered least recently active first.
for i = 1, math.max(excess, 0) do
  end_session(others[i][1], others[i][2], now_ms, 'session_evicted', detail)
  out[#out + 1] = others[i][1]
end

local max_expires_ms = now_ms + max_lifetime_ms
local expires_ms = math.min(now_ms + window_ms, max_expires_ms)
out[4], out[5], out[6], out[7] = expires_ms, max_expires_ms, trusted, replaced_sid
local flags = requires_trusted and FLAG_REQUIRES_TRUST or 0
local record = {secret_hash, user_id, device_id, device_type, device_name,
                now_ms, expires_ms, max_expires_ms, window_ms, extend, policy,
                now_ms, client_ip, user_agent, metadata, trusted,
                client_net, actions, flags}
write_record(sid, record)
write_marker(sid, record, MARKER_LIVE, now_ms)
prune_markers(now_ms)
redis.call('ZADD', k.index, now_ms, sid)
expire_not_before(k.index, expires_ms + grace_ms, now_ms)

-- A device the registry does not remember is new, unless it is the
-- user's first one.
if not device and redis.call('HLEN', k.devices) > 0 then
  emit('new_device', user_id, sid, device_id, '{}')
end
local first_seen_ms = device and device[D_FIRST_SEEN_MS] or now_ms
write_device(device_id, {sid, device_type, device_name, first_seen_ms, now_ms, trusted})
emit('session_created', user_id, sid, device_id, '{"policy":' .. cjson.encode(policy) .. '}')

return out

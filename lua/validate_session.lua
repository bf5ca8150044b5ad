--[[
  Check a session token and, on activity, slide the session's expiry:
  expires_at moves to now + window but never past max_expires_at.
  Atomically: only a record that exists is ever rewritten, so a
  validation racing a revoke can never bring the session back.

  KEYS[1]  <p>{tag}:s:<sid>  string      session record
  KEYS[2]  <p>{tag}:r:<sid>  string      revocation marker
  KEYS[3]  <p>{tag}:i        sorted set  user index
  KEYS[4]  <p>{tag}:d        hash        device registry
  KEYS[5]  <p>{tag}:s:       prefix      for counting the user's devices
  Every key shares the user's hash tag {tag}.

  ARGV[1]  secret_hash     first 16 bytes of SHA-256(secret), raw
  ARGV[2]  mode            '0' check only, '1' activity (extend when the
                           session extends on activity), '2' explicit
                           extend whatever extend_on_activity says
  ARGV[3]  grace_ms        how long an expired record is kept, ms
  ARGV[4]  min_step_ratio  an activity extension is written only when it
                           moves expires_at by at least window / this, e.g. 100
  ARGV[5]  device_count    '1' to count the user's live devices

  Returns  {OK, record, now_ms, extended, device_count}
             record is the stored MessagePack after any extension;
             extended is 1 when this call moved expires_at (mode 2:
             unless expires_at had already reached max_expires_at);
             device_count is -1 unless ARGV[5] asked for it
           {INVALID_TOKEN}   no such session, or the secret does not match
           {EXPIRED, max_lifetime_reached}  past expires_at; 1 when
                             expires_at had reached max_expires_at
           {REVOKED}         revoked, replaced or evicted (marker matches)
  Writes   on extension: the record (PXAT expires + grace), its index
           score (last activity), the index TTL, the device's last_seen.
           Time from redis.call('TIME').
]]
local session_key = KEYS[1]
local marker_key = KEYS[2]
local k = {index = KEYS[3], devices = KEYS[4], session_prefix = KEYS[5]}
local secret_hash = ARGV[1]
local mode = tonumber(ARGV[2])
local grace_ms = tonumber(ARGV[3])
local min_step_ratio = tonumber(ARGV[4])
local want_device_count = ARGV[5] == '1'

local now_ms = server_time_ms()
local raw = redis.call('GET', session_key)
if not raw then
  if redis.call('GET', marker_key) == secret_hash then
    return {REVOKED}
  end
  return {INVALID_TOKEN}
end

local record = cmsgpack.unpack(raw)
-- Both sides are hashes of a 256-bit secret, so how long the comparison
-- takes reveals nothing that helps forge a token.
if record[F_SECRET_HASH] ~= secret_hash then
  return {INVALID_TOKEN}
end

local expires_ms = record[F_EXPIRES_MS]
local max_expires_ms = record[F_MAX_EXPIRES_MS]
if now_ms >= expires_ms then
  return {EXPIRED, expires_ms >= max_expires_ms and 1 or 0}
end

local extended = 0
local wants_extension = mode == 2 or (mode == 1 and record[F_EXTEND] == 1)
if wants_extension then
  local window_ms = record[F_WINDOW_MS]
  local target_ms = math.min(now_ms + window_ms, max_expires_ms)
  local step_ms = target_ms - expires_ms
  -- An explicit extend writes any forward move; activity writes only
  -- steps worth a write, which caps writes per session per window.
  local min_step_ms = mode == 2 and 1 or math.floor(window_ms / min_step_ratio)
  if step_ms >= min_step_ms and step_ms > 0 then
    local sid = string.sub(session_key, #k.session_prefix + 1)
    record[F_EXPIRES_MS] = target_ms
    record[F_LAST_ACTIVE_MS] = now_ms
    raw = cmsgpack.pack(record)
    redis.call('SET', session_key, raw, 'PXAT', target_ms + grace_ms)
    redis.call('ZADD', k.index, now_ms, sid)
    expire_not_before(k.index, target_ms + grace_ms, now_ms)

    local device = read_device(k.devices, record[F_DEVICE_ID])
    if device and device[D_SESSION_ID] == sid then
      device[D_LAST_SEEN_MS] = now_ms
      redis.call('HSET', k.devices, record[F_DEVICE_ID], cmsgpack.pack(device))
    end
    extended = 1
  end
  -- An explicit extend reports false only once max_expires_at is reached.
  if mode == 2 and expires_ms < max_expires_ms then
    extended = 1
  end
end

local device_count = -1
if want_device_count then
  device_count = #live_sessions(k, record[F_USER_ID], now_ms)
end
return {OK, raw, now_ms, extended, device_count}

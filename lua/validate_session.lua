--[[
  Check a session token, look for anomalies, and on activity slide the
  session's expiry: expires_at moves to now + window but never past
  max_expires_at.
  Atomically: only a record that exists is ever rewritten, so a
  validation racing a revoke can never bring the session back.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  sid
  ARGV[6]  secret_hash       first 16 bytes of SHA-256(secret), raw
  ARGV[7]  mode              '0' check only, '1' activity (extend when the
                             session extends on activity), '2' explicit
                             extend whatever extend_on_activity says
  ARGV[8]  min_step_ratio    an activity extension is written only when it
                             moves expires_at by at least window / this
  ARGV[9]  device_count      '1' to count the user's live devices
  ARGV[10] client_net        caller's IPv4 /24 or IPv6 /48, '' if unknown
  ARGV[11] user_agent        caller's User-Agent, '' if unknown
  ARGV[12] failure_window_ms wrong secrets are counted per session in this window
  ARGV[13] failure_threshold wrong secrets within the window before the
                             policy's on_invalid_secret action applies

  Returns  {OK, events, record, now_ms, extended, device_count}
             record is the stored MessagePack after any extension;
             extended is 1 when this call moved expires_at (mode 2:
             unless expires_at had already reached max_expires_at);
             device_count is -1 unless ARGV[9] asked for it
           {INVALID_TOKEN, events}   no such session, or a wrong secret
           {EXPIRED, events, max_lifetime_reached}
           {REVOKED, events}         revoked, replaced or evicted
           {REAUTH_REQUIRED, events} an anomaly demands a new sign-in
  Writes   on activity (modes 1 and 2): the index score, at most once a
           second (or per 1 % of the window when shorter) unless another
           session of the user has a newer score. On extension: the record, the TTLs of the sessions
           hash and the index (at least expires + grace), the device's last_seen. On anomalies:
           events, the wrong-secret counter, the record's flags, or the
           end of sessions, as the policy's actions say.
           Time from redis.call('TIME').
]]
local sid = ARGV[5]
local secret_hash = ARGV[6]
local mode = tonumber(ARGV[7])
local min_step_ratio = tonumber(ARGV[8])
local want_device_count = ARGV[9] == '1'
local client_net = ARGV[10]
local user_agent = ARGV[11]
local failure_window_ms = tonumber(ARGV[12])
local failure_threshold = tonumber(ARGV[13])


-- A revoked session's token: apply the policy's reuse action to every
-- session of the user, since a replayed token suggests it was stolen.
local function on_revoked_token_used(marker)
  emit('revoked_token_used', marker[M_USER_ID], sid, marker[M_DEVICE_ID], '{}')
  local action = marker[M_REUSE_ACTION]
  if action == 'v' or action == 'r' then
    for _, entry in ipairs(redis.call('ZRANGE', k.index, 0, -1)) do
      local record = read_record(entry)
      if record and record[F_EXPIRES_MS] > now_ms then
        if action == 'v' then
          end_session(entry, record, now_ms, 'session_revoked', '{"reason":"revoked_token_used"}')
        elseif not has_flag(record, FLAG_REAUTH) then
          with_flag(record, FLAG_REAUTH)
          write_record(entry, record)
        end
      end
    end
  end
  return reply(REVOKED)
end

-- The right session id with a wrong secret: count it, and past the
-- threshold apply the policy's action to the session.
local function on_invalid_secret(record)
  local failures_key = k.failures_prefix .. sid
  local failures = redis.call('INCR', failures_key)
  if failures == 1 then
    redis.call('PEXPIRE', failures_key, failure_window_ms)
  end
  -- Every attempt up to the threshold is an event; beyond it the action
  -- has applied, and more events would only flush the user's history.
  if failures <= failure_threshold then
    emit('invalid_secret', record[F_USER_ID], sid, record[F_DEVICE_ID], '{"count":' .. failures .. '}')
  end

  local action = string.sub(record[F_ACTIONS], 2, 2)
  if failures >= failure_threshold then
    if action == 'v' then
      end_session(sid, record, now_ms, 'session_revoked', '{"reason":"invalid_secret"}')
    elseif action == 'r' and not has_flag(record, FLAG_REAUTH) then
      with_flag(record, FLAG_REAUTH)
      write_record(sid, record)
    end
  end
  return reply(INVALID_TOKEN)
end

-- The caller's network or user agent differs from the sign-in context.
-- Returns a status when the policy's action refuses this request.
local function check_context(record)
  local net_changed = client_net ~= '' and record[F_CLIENT_NET] ~= '' and client_net ~= record[F_CLIENT_NET]
  local agent_changed = user_agent ~= '' and record[F_USER_AGENT] ~= '' and user_agent ~= record[F_USER_AGENT]
  if not (net_changed or agent_changed) then
    return nil
  end

  local action = string.sub(record[F_ACTIONS], 1, 1)
  if not has_flag(record, FLAG_CONTEXT_REPORTED) then
    emit('context_changed', record[F_USER_ID], sid, record[F_DEVICE_ID],
         cjson.encode({network_changed = net_changed, user_agent_changed = agent_changed}))
    with_flag(record, FLAG_CONTEXT_REPORTED)
    if action == 'r' then
      with_flag(record, FLAG_REAUTH)
    end
    if action ~= 'v' then
      write_record(sid, record)
    end
  end
  if action == 'v' then
    end_session(sid, record, now_ms, 'session_revoked', '{"reason":"context_changed"}')
    return REVOKED
  end
  if action == 'r' then
    return REAUTH_REQUIRED
  end
  return nil
end

local function extend(record)
  local window_ms = record[F_WINDOW_MS]
  local expires_ms = record[F_EXPIRES_MS]
  local target_ms = math.min(now_ms + window_ms, record[F_MAX_EXPIRES_MS])
  local step_ms = target_ms - expires_ms
  -- An explicit extend writes any forward move; activity writes only
  -- steps worth a write, which caps writes per session per window.
  local min_step_ms = mode == 2 and 1 or math.floor(window_ms / min_step_ratio)
  if step_ms <= 0 or step_ms < min_step_ms then
    return false
  end

  record[F_EXPIRES_MS] = target_ms
  record[F_LAST_ACTIVE_MS] = now_ms
  write_record(sid, record)
  expire_not_before(k.index, target_ms + grace_ms, now_ms)

  local device = read_device(record[F_DEVICE_ID])
  if device and device[D_SESSION_ID] == sid then
    device[D_LAST_SEEN_MS] = now_ms
    write_device(record[F_DEVICE_ID], device)
  end
  return true
end

-- The record is gone: its marker tells a revoked session from an
-- expired one until the session's max_expires_at.
local function ended_session()
  local marker = read_marker(sid)
  -- Both sides are hashes of a 256-bit secret, so how long the
  -- comparison takes reveals nothing that helps forge a token.
  if not marker or marker[M_SECRET_HASH] ~= secret_hash or marker[M_UNTIL_MS] <= now_ms then
    return reply(INVALID_TOKEN)
  end
  if marker[M_STATE] == MARKER_REVOKED then
    return on_revoked_token_used(marker)
  end
  note_record_gone(sid)
  return reply(EXPIRED, 0)
end

-- Last activity is kept as the index score, so that lists and
-- evict_oldest follow real use while expiry writes stay throttled. Its
-- resolution is 1 s, or 1 % of the window when that is shorter. Inside
-- that step the score is still written when another session of the user
-- is newer, so the most recently active session always lists first.
local function note_activity(window_ms)
  local step_ms = math.min(1000, math.floor(window_ms / min_step_ratio))
  local newest = redis.call('ZREVRANGE', k.index, 0, 0, 'WITHSCORES')
  if newest[1] == sid and now_ms - tonumber(newest[2]) < step_ms then
    return
  end
  redis.call('ZADD', k.index, now_ms, sid)
end

local record = read_record(sid)
if not record then
  return ended_session()
end

if record[F_SECRET_HASH] ~= secret_hash then
  return on_invalid_secret(record)
end
if now_ms >= record[F_EXPIRES_MS] then
  note_expired(sid, record)
  return reply(EXPIRED, record[F_EXPIRES_MS] >= record[F_MAX_EXPIRES_MS] and 1 or 0)
end
if has_flag(record, FLAG_REAUTH) then
  return reply(REAUTH_REQUIRED)
end
local refused = check_context(record)
if refused then
  return reply(refused)
end

local extended = 0
if mode ~= 0 then
  note_activity(record[F_WINDOW_MS])
end
if mode == 2 or (mode == 1 and record[F_EXTEND] == 1) then
  if extend(record) then
    extended = 1
  end
  -- An explicit extend reports false only once max_expires_at is reached.
  if mode == 2 and record[F_EXPIRES_MS] < record[F_MAX_EXPIRES_MS] then
    extended = 1
  end
end

local device_count = -1
if want_device_count then
  device_count = #live_sessions(record[F_USER_ID], now_ms)
end
return reply(OK, cmsgpack.pack(record), now_ms, extended, device_count)

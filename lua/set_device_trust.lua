--[[
  Mark a device of a user trusted or not. Untrusting a device ends its
  live session when that session's policy required a trusted device.
  Atomically: no session that relies on trust outlives the device's trust.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  user_id
  ARGV[6]  device_id
  ARGV[7]  trusted     '1' or '0'

  Returns  {OK, events, device, active_sessions}   device is MessagePack
           {NOT_FOUND, events}   the registry does not know the device
  Writes   the device entry; may end its session (session_revoked with
           reason device_untrusted). Time from redis.call('TIME').
]]
local user_id = ARGV[5]
local device_id = ARGV[6]
local trusted = tonumber(ARGV[7])

local device = read_device(device_id)
if not device then
  return reply(NOT_FOUND)
end

device[D_TRUSTED] = trusted
local active = 0
local sid = device[D_SESSION_ID]
local record = sid ~= '' and read_record(sid) or nil
if record and record[F_USER_ID] == user_id and record[F_EXPIRES_MS] > now_ms then
  active = 1
  if trusted == 0 and has_flag(record, FLAG_REQUIRES_TRUST) then
    end_session(sid, record, now_ms, 'session_revoked', '{"reason":"device_untrusted"}')
    device[D_SESSION_ID] = ''
    active = 0
  end
end
write_device(device_id, device)
return reply(OK, cmsgpack.pack(device), active)

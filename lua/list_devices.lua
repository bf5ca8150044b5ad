--[[
  List the devices a user's registry remembers, with each one's count of
  live sessions (0 or 1: a device holds at most one). Read-only.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  user_id

  Returns  {OK, events, device_id_1, device_1, active_1, ...}
             devices are MessagePack
  Writes   nothing. Time from redis.call('TIME').
]]
local user_id = ARGV[5]

local out = reply(OK)
local entries = redis.call('HGETALL', k.devices)
for i = 1, #entries, 2 do
  local device = cmsgpack.unpack(entries[i + 1])
  local sid = device[D_SESSION_ID]
  local record = sid ~= '' and read_record(sid) or nil
  local active = 0
  if record and record[F_USER_ID] == user_id and record[F_EXPIRES_MS] > now_ms then
    active = 1
  end
  out[#out + 1] = entries[i]
  out[#out + 1] = entries[i + 1]
  out[#out + 1] = active
end
return out

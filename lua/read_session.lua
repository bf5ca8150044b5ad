--[[
  Read one live session's record, judged against the Redis server's
  clock, with its device's current trust. Read-only.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  sid

  Returns  {OK, events, record, now_ms, last_active_ms}   record is MessagePack
           {NOT_FOUND, events}            no record, or the session expired
  Writes   nothing. Time from redis.call('TIME').
]]
local sid = ARGV[5]

local record = read_record(sid)
if not record or record[F_EXPIRES_MS] <= now_ms then
  return reply(NOT_FOUND)
end

local device = read_device(record[F_DEVICE_ID])
record[F_TRUSTED] = device and device[D_TRUSTED] or 0
local score = redis.call('ZSCORE', k.index, sid)
local last_active_ms = score and tonumber(score) or record[F_LAST_ACTIVE_MS]
return reply(OK, cmsgpack.pack(record), now_ms, last_active_ms)

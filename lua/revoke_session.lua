--[[
  Revoke one live session of a user.
  Atomically: after this returns, no validation of the session succeeds,
  and a concurrent validation cannot write the record back.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  sid
  ARGV[6]  user_id   '' to accept any owner; else the session must be his
  ARGV[7]  reason    detail of the session_revoked event, e.g. 'admin'

  Returns  {OK, events}          revoked
           {NOT_FOUND, events}   no live session with that id (for that user)
  Writes   deletes the record and index entry, detaches the device, marks
           the session revoked in the markers hash (kept until its
           max_expires_at), emits session_revoked.
           Time from redis.call('TIME').
]]
local sid = ARGV[5]
local user_id = ARGV[6]
local reason = ARGV[7]

local record = read_record(sid)
if not record or record[F_EXPIRES_MS] <= now_ms then
  return reply(NOT_FOUND)
end
if user_id ~= '' and record[F_USER_ID] ~= user_id then
  return reply(NOT_FOUND)
end

end_session(sid, record, now_ms, 'session_revoked', cjson.encode({reason = reason}))
return reply(OK)

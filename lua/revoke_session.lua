--[[
  Revoke one live session of a user.
  Atomically: after this returns, no validation of the session succeeds,
  and a concurrent validation cannot write the record back.

  KEYS[1]  <p>{tag}:i   sorted set  user index
  KEYS[2]  <p>{tag}:d   hash        device registry
  KEYS[3]  <p>{tag}:s:  prefix      session record key = KEYS[3] .. sid
  KEYS[4]  <p>{tag}:r:  prefix      revocation marker key = KEYS[4] .. sid
  Every key shares the user's hash tag {tag}.

  ARGV[1]  sid       session id within the user
  ARGV[2]  user_id   '' to accept any owner; else the session must be his

  Returns  {OK}          revoked
           {NOT_FOUND}   no live session with that id (for that user)
  Writes   deletes the record and index entry, detaches the device, sets
           the revocation marker (PXAT max_expires_at).
           Time from redis.call('TIME').
]]
local k = {index = KEYS[1], devices = KEYS[2], session_prefix = KEYS[3], marker_prefix = KEYS[4]}
local sid = ARGV[1]
local user_id = ARGV[2]

local now_ms = server_time_ms()
local record = read_record(k.session_prefix .. sid)
if not record or record[F_EXPIRES_MS] <= now_ms then
  return {NOT_FOUND}
end
if user_id ~= '' and record[F_USER_ID] ~= user_id then
  return {NOT_FOUND}
end

end_session(k, sid, record, now_ms)
return {OK}

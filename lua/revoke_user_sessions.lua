--[[
  Revoke every live session of a user, optionally keeping one.
  Atomically: no session of the user other than the kept one survives,
  and none created concurrently slips between list and revoke.

  KEYS[1]  <p>{tag}:i   sorted set  user index
  KEYS[2]  <p>{tag}:d   hash        device registry
  KEYS[3]  <p>{tag}:s:  prefix      session record key = KEYS[3] .. sid
  KEYS[4]  <p>{tag}:r:  prefix      revocation marker key = KEYS[4] .. sid
  Every key shares the user's hash tag {tag}.

  ARGV[1]  user_id
  ARGV[2]  except_sid   sid to keep, '' to revoke all

  Returns  {OK, revoked_count, revoked_sid...}
  Writes   as revoke_session.lua, once per revoked session.
           Time from redis.call('TIME').
]]
local k = {index = KEYS[1], devices = KEYS[2], session_prefix = KEYS[3], marker_prefix = KEYS[4]}
local user_id = ARGV[1]
local except_sid = ARGV[2]

local now_ms = server_time_ms()
local reply = {OK, 0}
for _, entry in ipairs(live_sessions(k, user_id, now_ms)) do
  local sid = entry[1]
  if sid ~= except_sid then
    end_session(k, sid, entry[2], now_ms)
    reply[#reply + 1] = sid
  end
end
reply[2] = #reply - 2
return reply

--[[
  Revoke every live session of a user, optionally keeping one.
  Atomically: no session of the user other than the kept one survives,
  and none created concurrently slips between list and revoke.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  user_id
  ARGV[6]  except_sid   sid to keep, '' to revoke all
  ARGV[7]  reason       detail of the session_revoked events

  Returns  {OK, events, revoked_sid...}
  Writes   as revoke_session.lua, once per revoked session.
           Time from redis.call('TIME').
]]
local user_id = ARGV[5]
local except_sid = ARGV[6]
local detail = cjson.encode({reason = ARGV[7]})

local out = reply(OK)
for _, entry in ipairs(live_sessions(user_id, now_ms)) do
  local sid = entry[1]
  if sid ~= except_sid then
    end_session(sid, entry[2], now_ms, 'session_revoked', detail)
    out[#out + 1] = sid
  end
end
return out

--[[
  List a user's live sessions, most recently active first, with each
  device's current trust, and prune index entries of sessions that
  expired or were deleted.
  Atomically: the list is one consistent view of the user's sessions.

  KEYS, ARGV[1..4]  the user's keys and shared settings (_prelude.lua)
  ARGV[5]  user_id

  Returns  {OK, events, now_ms, sid_1, record_1, active_ms_1, ...}
             records are MessagePack, newest activity first; active_ms
             is the last activity (the index score, at most 1 s old)
  Writes   ZREM of dead index entries, session_expired for each expired
           one. Time from redis.call('TIME').
]]
local user_id = ARGV[5]

local live = live_sessions(user_id, now_ms)

-- Appended one by one: unpack() of a long list would overflow Lua's stack.
local out = reply(OK, now_ms)
for i = #live, 1, -1 do
  local sid, record = live[i][1], live[i][2]
  local device = read_device(record[F_DEVICE_ID])
  record[F_TRUSTED] = device and device[D_TRUSTED] or 0
  out[#out + 1] = sid
  out[#out + 1] = cmsgpack.pack(record)
  out[#out + 1] = live[i][3]
end
return out

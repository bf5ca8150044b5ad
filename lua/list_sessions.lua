--[[
  List a user's live sessions, most recently active first, and prune
  index entries of sessions that expired or were deleted.
  Atomically: the list is one consistent view of the user's sessions.

  KEYS[1]  <p>{tag}:i   sorted set  user index
  KEYS[2]  <p>{tag}:s:  prefix      session record key = KEYS[2] .. sid
  Every key shares the user's hash tag {tag}.

  ARGV[1]  user_id

  Returns  {OK, now_ms, sid_1, record_1, sid_2, record_2, ...}
             records are the stored MessagePack, newest activity first
  Writes   ZREM of dead index entries. Time from redis.call('TIME').
]]
local k = {index = KEYS[1], session_prefix = KEYS[2]}
local user_id = ARGV[1]

local now_ms = server_time_ms()
local live = live_sessions(k, user_id, now_ms)

local reply = {OK, now_ms}
for i = #live, 1, -1 do
  reply[#reply + 1] = live[i][1]
  reply[#reply + 1] = cmsgpack.pack(live[i][2])
end
return reply

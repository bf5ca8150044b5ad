--[[
  Read one live session's record, judged against the Redis server's clock.
  Read-only.

  KEYS[1]  <p>{tag}:s:<sid>  string  session record

  Returns  {OK, record, now_ms}   record is the stored MessagePack
           {NOT_FOUND}            no record, or the session has expired
  Writes   nothing. Time from redis.call('TIME').
]]
local session_key = KEYS[1]

local now_ms = server_time_ms()
local raw = redis.call('GET', session_key)
if not raw then
  return {NOT_FOUND}
end

local record = cmsgpack.unpack(raw)
if record[F_EXPIRES_MS] <= now_ms then
  return {NOT_FOUND}
end
return {OK, raw, now_ms}

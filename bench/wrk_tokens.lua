--[[
  wrk script: send GET requests that rotate over many session tokens.

  Arguments after wrk's "--":
    1  tokens file: one "token<TAB>user agent[<TAB>...]" per line
    2  how to send the token: "bearer" (Authorization: Bearer) or
       "cookie:NAME" (Cookie: NAME=token); default "bearer"

  Each thread builds every request once at start-up and then walks the
  list from its own offset, so the request loop does no string work.
  At the end the script prints one line "WRK_JSON {...}" with the
  request count, errors and latency percentiles in microseconds.
]]

local thread_count = 0
local threads = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
  threads[#threads + 1] = thread
end

local requests_built = {}
local position = 1

function init(args)
  local path = args[1]
  local mode = args[2] or "bearer"
  local file = assert(io.open(path, "r"), "cannot open tokens file " .. tostring(path))
  for line in file:lines() do
    local token, agent = line:match("^([^\t]+)\t([^\t]*)")
    if token then
      local headers = {["User-Agent"] = agent}
      if mode == "bearer" then
        headers["Authorization"] = "Bearer " .. token
      else
        headers["Cookie"] = mode:sub(8) .. "=" .. token
      end
      requests_built[#requests_built + 1] = wrk.format("GET", wrk.path, headers)
    end
  end
  file:close()
  assert(#requests_built > 0, "no tokens in " .. path)
  -- Threads start at different places, so they do not hit the same sessions together.
  position = (thread_number or 1) * 7919 % #requests_built + 1
end

function request()
  local built = requests_built[position]
  position = position % #requests_built + 1
  return built
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end

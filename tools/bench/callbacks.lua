-- wrk script of `make bench`: sends the requests of a file written by tools/bench/mix.py,
-- in order, each thread from its own offset.
--   BENCH_REQUESTS=FILE [BENCH_RATE=R] [BENCH_CLOSE=1] [BENCH_WRK_THREADS=T] wrk -t T ...
-- BENCH_RATE (requests/s over all T threads; unset = as fast as answered) paces each
-- thread by a schedule (the n-th request is due at start + n / rate), not by a fixed gap,
-- so a slow answer does not lower the offered rate while connections are free (an open
-- loop, as long as one of the connections is free). BENCH_CLOSE adds `Connection: close`:
-- a new connection per request. Settings come from the environment, not script
-- arguments, because wrk decides whether to call delay() before any init(args).
-- done() prints one line, `BENCH {json}`, that tools/bench/wrk.py reads.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *ts);
]]
local now_buffer = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_buffer) -- CLOCK_MONOTONIC
  return tonumber(now_buffer.tv_sec) * 1000 + tonumber(now_buffer.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local requests = {}
local position = 1
local interval_ms = 0
local next_due = nil

local function load(path, close)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local at = 1
  while at <= #data do
    local newline = data:find("\n", at, true)
    local length = tonumber(data:sub(at, newline - 1))
    local raw = data:sub(newline + 1, newline + length)
    if close then
      local head_end = raw:find("\r\n\r\n", 1, true)
      raw = raw:sub(1, head_end - 1) .. "\r\nConnection: close" .. raw:sub(head_end)
    end
    requests[#requests + 1] = raw
    at = newline + 1 + length
  end
end

local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local threads_total = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")

function init(args)
  load(os.getenv("BENCH_REQUESTS"), os.getenv("BENCH_CLOSE") == "1")
  if rate > 0 then
    interval_ms = 1000 * threads_total / rate
  end
  position = 1 + math.floor(#requests * (thread_id or 0) / threads_total)
end

function request()
  local raw = requests[position]
  position = position + 1
  if position > #requests then
    position = 1
  end
  return raw
end

local function paced_delay()
  local now = now_ms()
  if next_due == nil then
    next_due = now
  end
  local wait = next_due - now
  next_due = next_due + interval_ms
  if wait < 0 then
    return 0
  end
  return math.floor(wait)
end

if rate > 0 then
  delay = paced_delay -- defined only when pacing: wrk then times every request
end

function done(summary, latency, requests_)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50),
    latency:percentile(99), latency.max))
end

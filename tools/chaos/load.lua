-- wrk script of the fault suite (tools/chaos/run.py runs it; see docs/testing.md).
--
-- Every request is a realistic callback of a configured source, built from templates
-- tools/chaos/traffic.py writes (CHAOS_TEMPLATES), with its own external id put in place
-- of XCHAOSIDX. wrk runs one connection per thread here, so on a thread requests and
-- answers alternate: the answer wrk reports is the answer to the request last built.
-- A request that gets no answer (the connection failed) is sent again, same id, as a
-- provider retries. Each thread writes to CHAOS_OUT/thread-NN.log:
--   "<id> <status>"  an HTTP answer
--   "<id> 0"         a first attempt with no answer (later lines of that id may follow)
-- The last line of an id is how it ended. A request that never got an attempt through
-- before wrk stopped has no line.

local templates = dofile(os.getenv("CHAOS_TEMPLATES"))
local out_dir = os.getenv("CHAOS_OUT")
local tag = os.getenv("CHAOS_TAG")
local pace_ms = tonumber(os.getenv("CHAOS_PACE_MS") or "0")

local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local sent = 0
local pending = nil -- the id waiting for its answer
local pending_request = nil
local pending_failed = false
local journal = nil
local checking = false

function init(args)
   -- wrk builds one request in the first thread's state to check the script, and never
   -- sends it: that one gets no line.
   checking = tid == 1
   journal = assert(io.open(string.format("%s/thread-%02d.log", out_dir, tid), "w"))
   -- line-buffered: what a thread saw survives however wrk ends
   journal:setvbuf("line")
end

local function fill(text, id)
   if text == nil then
      return nil
   end
   return (text:gsub("XCHAOSIDX", id))
end

function request()
   if pending ~= nil then
      if not pending_failed then
         journal:write(pending, " 0\n")
         pending_failed = true
      end
      return pending_request
   end
   sent = sent + 1
   local id = string.format("%st%02dn%07d", tag, tid, sent)
   local t = templates[(sent * 7 + tid) % #templates + 1]
   local built = wrk.format(t.method, fill(t.path, id), t.headers, fill(t.body, id))
   if checking then
      checking = false
      return built
   end
   pending, pending_request, pending_failed = id, built, false
   return built
end

function response(status, headers, body)
   if pending ~= nil then
      journal:write(pending, " ", status, "\n")
      pending = nil
   end
end

function delay()
   return pace_ms
end

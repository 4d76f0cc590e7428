-- benches/origin.sh's wrk script. Settings come from the environment:
--   ORIGIN_PATH      the GET path (default /slow?ms=6)
--   ORIGIN_POST_PCT  percent of requests that are POST /echo?rid=RUN-THREAD-N with a small body
--                    (default 0); each rid is unique, so backend receipt logs show duplicates
--   ORIGIN_RUN       a tag that makes rids unique across runs (default "run")
--   ORIGIN_DELAY_MS  when set, each connection waits this long (+-20 %, random) before each
--                    request: paced keep-alive clients
-- done() prints one line that origin.sh parses:
--   RESULT requests=.. duration_s=.. rps=.. p50_ms=.. p99_ms=.. non2xx3xx=.. connect=..
--          read=.. write=.. timeout=.. statuses=200:n,502:n gets=.. gets_ok=.. posts=.. posts_ok=..

local get_path = os.getenv("ORIGIN_PATH") or "/slow?ms=6"
local post_pct = tonumber(os.getenv("ORIGIN_POST_PCT") or "0") or 0
local run_tag = os.getenv("ORIGIN_RUN") or "run"
local delay_ms = tonumber(os.getenv("ORIGIN_DELAY_MS") or "0") or 0

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  statuses = {}
  gets = 0
  gets_ok = 0
  posts = 0
  posts_ok = 0
end

function request()
  if post_pct > 0 and math.random(100) <= post_pct then
    posts = posts + 1
    local rid = run_tag .. "-" .. tid .. "-" .. posts
    return wrk.format("POST", "/echo?rid=" .. rid,
      { ["Content-Type"] = "application/octet-stream" },
      "origin-post " .. rid .. " " .. string.rep("x", 64))
  end
  gets = gets + 1
  return wrk.format("GET", get_path)
end

if delay_ms > 0 then
  function delay()
    return math.floor(delay_ms * (0.8 + 0.4 * math.random()))
  end
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 200 and body and body:sub(1, 11) == "origin-post" then
    posts_ok = posts_ok + 1
  elseif status == 200 and body and body:sub(1, 5) == "hello" then
    gets_ok = gets_ok + 1
  end
end

function done(summary, latency, requests)
  local all = {}
  local g, gok, p, pok = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do all[k] = (all[k] or 0) + v end
    g = g + (t:get("gets") or 0)
    gok = gok + (t:get("gets_ok") or 0)
    p = p + (t:get("posts") or 0)
    pok = pok + (t:get("posts_ok") or 0)
  end
  local keys = {}
  for k, _ in pairs(all) do table.insert(keys, k) end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do table.insert(parts, k .. ":" .. all[k]) end
  local statuses_s = #parts > 0 and table.concat(parts, ",") or "none"
  local dur = summary.duration / 1e6
  local p50, p99 = 0, 0
  if summary.requests > 0 then
    p50 = latency:percentile(50) / 1000
    p99 = latency:percentile(99) / 1000
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.1f p50_ms=%.1f p99_ms=%.1f non2xx3xx=%d " ..
    "connect=%d read=%d write=%d timeout=%d statuses=%s gets=%d gets_ok=%d posts=%d posts_ok=%d\n",
    summary.requests, dur, summary.requests / dur, p50, p99, e.status,
    e.connect, e.read, e.write, e.timeout, statuses_s, g, gok, p, pok))
end

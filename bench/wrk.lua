-- wrk script: cycles through request bodies (one JSON per line of the file named by
-- BENCH_BODIES) and prints a JSON summary with the percentiles the report needs.
-- Requests are formatted once in init(), so each request costs the client a table lookup.
local requests = {}
local idx = 0
local method = os.getenv("BENCH_METHOD") or "POST"
local path = os.getenv("BENCH_PATH") or "/predict"

local function unhex(hex)
  return (hex:gsub("..", function(cc) return string.char(tonumber(cc, 16)) end))
end

init = function(args)
  local file = os.getenv("BENCH_BODIES")
  if file and file ~= "" then
    local binary = os.getenv("BENCH_FORMAT") == "hexbin"
    for line in io.lines(file) do
      if binary then
        -- "<json header length> <hex of the whole body>": the binary tensor extension
        local length, hex = line:match("^(%d+) (%x+)$")
        requests[#requests + 1] = wrk.format(method, path, {
          ["Content-Type"] = "application/octet-stream",
          ["Inference-Header-Content-Length"] = length}, unhex(hex))
      else
        requests[#requests + 1] = wrk.format(method, path,
                                             {["Content-Type"] = "application/json"}, line)
      end
    end
  else
    requests[1] = wrk.format(method, path)
  end
  math.randomseed(os.time())
  idx = math.random(#requests)
end

request = function()
  idx = idx % #requests + 1
  return requests[idx]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean))
end

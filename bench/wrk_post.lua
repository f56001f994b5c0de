-- wrk script: POST the JSON body in the file named after "--" on every request,
-- then print one line "WRK_RESULT {json}" that bench/loadgen.py parses.
-- Usage: wrk -t1 -c16 -d15s -s bench/wrk_post.lua http://127.0.0.1:P/predict -- body.json

function init(args)
  local f = assert(io.open(args[1], "rb"), "wrk_post.lua: cannot read the body file")
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

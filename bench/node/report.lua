-- wrk script of bench/node/run.js: an optional body (BODY_BYTES bytes,
-- POSTed), and one JSON line of results at the end.
local n = tonumber(os.getenv("BODY_BYTES") or "0")
if n > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", n)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end

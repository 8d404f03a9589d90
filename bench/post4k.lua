-- wrk script for the echo workload: POST a 4 KiB body to the request path
-- (run.sh targets /echo).
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"

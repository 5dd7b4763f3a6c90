-- wrk reporter: one JSON line (prefixed WRKJSON) with exact latency percentiles in microseconds, so
-- the bench never parses wrk's human units. Only done() is defined: wrk runs request()/response()
-- hooks in Lua for every request when a script defines them, which would slow the load generator.
-- API: wrk's SCRIPTING file (done(summary, latency, requests); latency:percentile(p)).

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.2f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end

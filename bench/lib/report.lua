-- wrk: one parseable line with throughput and latency percentiles (microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK rps=%.0f p50_us=%d p99_us=%d p999_us=%d max_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status))
end

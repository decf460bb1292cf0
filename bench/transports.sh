#!/usr/bin/env bash
# The four transports side by side: no-op jobs through one worker process
# with the durable journal at concurrency 64, and enqueue → handler-start latency at 100 jobs/s,
# each bench starting its own server (redis-server, nats-server -js, the control plane), in one
# run on one machine. Prints one table; the raw JSON of each bench goes to $OUT (default
# target/bench-transports/).
#   bench/transports.sh [JOBS_BROKER=20000] [JOBS_HTTP=5000]
set -euo pipefail
cd "$(dirname "$0")/.."
citadel="${CITADEL:-target/release/citadel}"
[ -x "$citadel" ] || cargo build --release --locked --bin citadel
jobs_broker="${1:-20000}"
jobs_http="${2:-5000}"
out="${OUT:-target/bench-transports}"
mkdir -p "$out"
common=(--concurrency 64 --journal durable --rate 100 --latency-for 5s --json)
echo "redis…" >&2
"$citadel" bench redis "${common[@]}" --jobs "$jobs_broker" >"$out/redis.json"
echo "nats…" >&2
"$citadel" bench nats "${common[@]}" --jobs "$jobs_broker" >"$out/nats.json"
echo "websocket…" >&2
"$citadel" bench websocket "${common[@]}" --jobs "$jobs_http" >"$out/websocket.json"
echo "nexus…" >&2
"$citadel" bench nexus "${common[@]}" --jobs "$jobs_http" >"$out/nexus.json"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
print("TRANSPORT  JOBS/S (c=64, durable)  CPU µs/JOB  ENQUEUE→START p50  p99  ENQUEUE→DONE p99 (100 jobs/s)")
for name in ["redis", "nats", "websocket", "nexus"]:
    r = json.load(open(os.path.join(out, name + ".json")))
    tp = r["throughput"][0]
    s, d = r["latency"]["start"], r["latency"]["done"]
    print(f"{name:<10} {tp['jobs_per_sec']:>22,.0f}  {tp['cpu_us_per_job']:>10,.0f}  {s['p50_ms']:>14.2f} ms  {s['p99_ms']:.2f} ms  {d['p99_ms']:.2f} ms")
PY

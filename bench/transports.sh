#!/usr/bin/env bash
# The four transports side by side (issue 5's benchmark): no-op jobs through one worker process
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
common=(--concurrency 64 --rate 100 --latency-for 5s --json)
echo "redis…" >&2
"$citadel" bench redis "${common[@]}" --jobs "$jobs_broker" >"$out/redis.json"
echo "nats…" >&2
"$citadel" bench nats "${common[@]}" --jobs "$jobs_broker" >"$out/nats.json"
echo "websocket…" >&2
"$citadel" bench websocket "${common[@]}" --jobs "$jobs_http" >"$out/websocket.json"
echo "nexus…" >&2
"$citadel" bench nexus "${common[@]}" --jobs "$jobs_http" --plain-jobs 0 >"$out/nexus.json"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
print("TRANSPORT  JOBS/S (c=64, durable)  DISPATCH p50  p99 (100 jobs/s)")
for name in ["redis", "nats", "websocket", "nexus"]:
    r = json.load(open(os.path.join(out, name + ".json")))
    tp = [t for t in r["throughput"] if t["concurrency"] == 64 and t.get("durable", True)]
    lat = r["latency"]
    lat = lat[0] if isinstance(lat, list) else lat
    print(f"{name:<10} {tp[0]['jobs_per_sec']:>22,.0f}  {lat['p50_ms']:>9.2f} ms  {lat['p99_ms']:.2f} ms")
PY

#!/usr/bin/env bash
# Soak: JOBS no-op jobs through Redis into one `citadel work` process, sampling Redis's
# `used_memory` every EVERY seconds while they flow and for COOL seconds after the last one is
# done, to see whether memory levels off. The producer keeps at most BACKLOG jobs unread (it
# offers up to RATE jobs/s), so the numbers show what a steady flow leaves behind, not a queue.
# Afterwards it prints the bytes one finished job leaves (`MEMORY USAGE` of its keys).
#   bench/soak-redis.sh [extra `citadel work` flags…]
# Environment: CITADEL (binary, default target/release/citadel), JOBS (200000), RATE (2000),
# BACKLOG (2000), EVERY (5), COOL (90), CONCURRENCY (16), OUT (CSV of the samples,
# default target/soak-redis.csv). Compare two builds by running it once with each binary.
set -euo pipefail
cd "$(dirname "$0")/.."
citadel="${CITADEL:-target/release/citadel}"
[ -x "$citadel" ] || cargo build --release --locked --bin citadel
out="${OUT:-target/soak-redis.csv}"
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" &
redis_pid=$!
worker_pid=
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$citadel" --data-dir "$tmp/data" work --transport redis --redis-url "redis://127.0.0.1:$port" \
  --concurrency "${CONCURRENCY:-16}" --status-listen off "$@" >"$tmp/worker.log" 2>&1 &
worker_pid=$!
python3 - "$port" "$out" <<'PY'
import os, socket, sys, time

port, out = int(sys.argv[1]), sys.argv[2]
JOBS = int(os.environ.get("JOBS", 200000))
RATE = int(os.environ.get("RATE", 2000))
BACKLOG = int(os.environ.get("BACKLOG", 2000))
EVERY = float(os.environ.get("EVERY", 5))
COOL = float(os.environ.get("COOL", 90))
STREAM, GROUP = "jobs:v1:gpu-general", "workers"

class Conn:
    """A minimal RESP2 client: send commands, read replies."""
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")
    def send(self, cmds):
        buf = bytearray()
        for c in cmds:
            buf += b"*%d\r\n" % len(c)
            for a in c:
                a = a if isinstance(a, bytes) else str(a).encode()
                buf += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(buf)
        return [self.read() for _ in cmds]
    def read(self):
        line = self.f.readline()[:-2]
        t, rest = line[:1], line[1:]
        if t == b"+": return rest.decode()
        if t == b"-": return RuntimeError(rest.decode())
        if t == b":": return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0: return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(line)
    def one(self, *c):
        return self.send([c])[0]

c = Conn()
def progress():
    """(entries the group has read, entries pending) — 0, 0 before the group exists."""
    g = c.one("XINFO", "GROUPS", STREAM)
    if isinstance(g, Exception) or not g: return 0, 0
    d = dict(zip(g[0][::2], g[0][1::2]))
    return int(d.get("entries-read") or 0), int(d["pending"])
def used_memory():
    info = c.one("INFO", "memory")
    return int(next(l.split(":")[1] for l in info.split("\r\n") if l.startswith("used_memory:")))

samples, sent, start = [], 0, time.monotonic()
next_sample, done_at = start, None
while True:
    now = time.monotonic()
    read, pending = progress()
    if sent < JOBS and sent - read < BACKLOG:
        n = min(RATE // 10, JOBS - sent, BACKLOG - (sent - read))
        c.send([["XADD", STREAM, "*", "jobId", f"soak-{sent + i}", "type", "noop", "payload", "{}"]
                for i in range(n)])
        sent += n
    if done_at is None and sent == JOBS and read >= JOBS and pending == 0:
        done_at = now
        # What the last job left, measured before any of it expires.
        last = f"soak-{JOBS - 1}"
        usage = [(key, c.one("MEMORY", "USAGE", key), c.one("PTTL", key)) for key in
                 [f"job:{last}:status", f"job:{last}:done", f"stream:v1:{last}:events", STREAM]]
    if now >= next_sample:
        keys = c.one("DBSIZE")
        xlen = c.one("XLEN", STREAM)
        samples.append((round(now - start, 1), read - pending, used_memory(), keys, xlen))
        print("t=%6.1fs done=%7d used_memory=%6.1f MiB keys=%7d xlen=%7d" %
              (samples[-1][0], samples[-1][1], samples[-1][2] / 2**20, keys, xlen), flush=True)
        next_sample += EVERY
    if done_at is not None and now - done_at >= COOL:
        break
    time.sleep(0.1)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as f:
    f.write("seconds,jobs_done,used_memory_bytes,keys,stream_len\n")
    for s in samples: f.write(",".join(map(str, s)) + "\n")
rate = JOBS / (done_at - start)
print(f"{JOBS} jobs in {done_at - start:.0f} s ({rate:.0f} jobs/s); samples in {out}")
for key, size, ttl in usage:
    print(f"MEMORY USAGE {key}: {size} bytes, PTTL {ttl} ms")
PY

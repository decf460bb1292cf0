#!/usr/bin/env bash
# Where the worker's CPU goes on Redis: the release code with its symbols (the cargo profile
# `profiling`), `perf record` of `citadel bench redis` at one concurrency with the durable
# journal (the Redis it starts is recorded too), folded into a flame graph with inferno
# (installed with `cargo install` when missing). Writes bench/results/flame-redis-c<C>.svg and
# prints the functions that cost the most, by process (frames narrower than a pixel are left out of
# the graph, which keeps it small).
#   bench/profile.sh [CONCURRENCY=16] [JOBS=8000]
set -euo pipefail
cd "$(dirname "$0")/.."
c="${1:-16}"
jobs="${2:-8000}"
if ! command -v perf >/dev/null; then
  echo "installing linux-perf…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null; then
  echo "installing inferno (flame graphs)…" >&2
  cargo install --locked inferno
fi
echo "building citadel (profile: profiling)…" >&2
cargo build --profile profiling --locked --bin citadel
out=target/profile
rm -rf "$out" && mkdir -p "$out"
# DWARF call graphs: the release code keeps no frame pointers.
perf record -q -F 299 -g --call-graph dwarf,8192 -o "$out/perf.data" -- \
  target/profiling/citadel bench --data-dir "$out/data" redis --concurrency "$c" \
  --journal durable --jobs "$jobs" --latency-for 0s
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf >"$out/folded.txt"
inferno-flamegraph --minwidth 1 --title "citadel bench redis, concurrency $c, journal durable ($jobs no-op jobs)" \
  <"$out/folded.txt" >"bench/results/flame-redis-c$c.svg"
echo "flame graph: bench/results/flame-redis-c$c.svg" >&2
perf report -i "$out/perf.data" --no-children --sort comm,dso,symbol --stdio 2>/dev/null |
  grep -v '^#' | grep -v '^$' | head -40

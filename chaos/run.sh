#!/usr/bin/env bash
# Runs the chaos suite (docs/chaos.md): builds the release `citadel` with
# `--features chaos` and the container images (chaos/images/build.sh skips what did not
# change), then the scenarios one at a time, each printing its figures; the figures of the run
# are also written to $CARGO_TARGET_DIR/chaos-figures.md (or target/).
# Without a Docker engine the suite is skipped with the reason, except with CI=true, where a
# missing Docker is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "chaos suite: CI=true but no Docker engine answers (docker info failed): failing" >&2
    exit 1
  fi
  echo "chaos suite skipped: no Docker engine answers here (docker info failed)"
  exit 0
fi

# The chaos build goes to its own folder: target/release/citadel stays a normal build (a binary
# with crash points must never be installed by mistake).
chaos_target="$target/chaos"
echo "chaos suite: release build with --features chaos (in $chaos_target)"
cargo build --release --locked --features chaos --bin citadel --target-dir "$chaos_target"
chaos/images/build.sh --citadel "$chaos_target/release/citadel"

figures="$target/chaos-figures.md"
{
  echo "| scenario | sent | completed | dead-lettered | re-executed | duplicated | lost | stuck | faults | longest recovery |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} >"$figures"
CITADEL_CHAOS=1 CITADEL_CHAOS_FIGURES="$(realpath "$figures")" \
  cargo test -p citadel-chaos --locked -- --test-threads=1 --nocapture "$@"
echo
echo "chaos figures ($figures):"
cat "$figures"

#!/usr/bin/env bash
# The side-by-side comparison with apalis and Celery, in one run against one Redis
# (bench/compare.py says what it measures). Installs what is missing (redis-server, redis-cli,
# strip), builds citadel and the apalis peer in release, creates the Python virtual environment
# for Celery and the chart, then runs. Arguments go to bench/compare.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

# --help answers at once, before anything is installed or built.
for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then exec python3 bench/compare.py --help; fi
done

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v strip >/dev/null || need+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  echo "installing ${need[*]}…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "building citadel and the apalis peer (release)…" >&2
cargo build --release --locked --bin citadel
cargo build --release --locked --manifest-path bench/peers/apalis/Cargo.toml

venv=bench/.venv
if [[ ! -x $venv/bin/python ]] || ! cmp -s bench/peers/celery/requirements.txt $venv/.requirements; then
  echo "creating $venv (Celery, redis, matplotlib)…" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r bench/peers/celery/requirements.txt
  cp bench/peers/celery/requirements.txt "$venv/.requirements"
fi
exec "$venv/bin/python" bench/compare.py "$@"

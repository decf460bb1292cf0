#!/usr/bin/env bash
# Builds the chaos suite's container images locally (no image can be pulled here): each image is
# an assembled root file system — one binary, the shared libraries `ldd` says it links, the
# dynamic loader and a few empty folders — imported with `docker import` (the FROM-scratch
# equivalent). Images:
#   citadel-chaos/redis:latest    Debian's redis-server (AOF on, fsync always)
#   citadel-chaos/nats:latest     Debian's nats-server (JetStream in /data)
#   citadel-chaos/citadel:latest  our release `citadel` built with `--features chaos`, plus
#                                 /bin/sh (Debian's dash) and /bin/sleep for `shell_command` jobs
#                                 whose side effect the suite counts
# An image whose inputs (the binary, its libraries, this script) did not change is not rebuilt:
# the hash of the inputs is kept in the image's label `citadel.chaos.inputs`.
#
# Usage: chaos/images/build.sh [--citadel PATH]   (default: ${CARGO_TARGET_DIR:-target}/chaos/release/citadel, where chaos/run.sh builds it)
set -euo pipefail
cd "$(dirname "$0")/../.."

citadel="${CARGO_TARGET_DIR:-target}/chaos/release/citadel"
if [ "${1:-}" = "--citadel" ]; then citadel="$2"; fi

die() { echo "chaos images: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"

libs_of() { # the shared libraries and loader a binary needs, one path a line
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u
}

# build_image NAME BINARY ENTRYPOINT-JSON [EXTRA-BINARY:PATH-IN-IMAGE]...
build_image() {
  local name="$1" bin; bin="$(readlink -f "$2")"; local entry="$3"
  local extras=("${@:4}") x all=("$bin")
  [ -x "$bin" ] || die "$2 is missing (for image $name)"
  for x in "${extras[@]}"; do
    [ -x "${x%%:*}" ] || die "${x%%:*} is missing (for image $name)"
    all+=("$(readlink -f "${x%%:*}")")
  done
  local hash
  hash="$( { sha256sum "${all[@]}" "$0"; for b in "${all[@]}"; do for l in $(libs_of "$b"); do sha256sum "$(readlink -f "$l")"; done; done; echo "$entry ${extras[*]}"; } \
    | sha256sum | cut -c1-16)"
  local have
  have="$(docker image inspect -f '{{ index .Config.Labels "citadel.chaos.inputs" }}' "$name" 2>/dev/null || true)"
  if [ "$have" = "$hash" ]; then
    echo "chaos images: $name is up to date ($hash)"
    return
  fi
  local root; root="$(mktemp -d)"
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/{bin,data,tmp,etc,lib64,lib/x86_64-linux-gnu}
  chmod 1777 "$root/tmp"
  cp "$bin" "$root/bin/$(basename "$2")"
  for x in "${extras[@]}"; do
    mkdir -p "$root$(dirname "${x#*:}")"
    cp -L "${x%%:*}" "$root${x#*:}"
  done
  for b in "${all[@]}"; do
    for l in $(libs_of "$b"); do
      mkdir -p "$root$(dirname "$l")"
      cp -L "$l" "$root$l"
    done
  done
  echo 'root:x:0:0:root:/data:/bin/none' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  tar -C "$root" -c . | docker import \
    --change "ENTRYPOINT $entry" \
    --change "WORKDIR /data" \
    --change "LABEL citadel.chaos.inputs=$hash" \
    - "$name" >/dev/null
  echo "chaos images: built $name ($hash, $(du -sh "$root" | cut -f1))"
}

build_image citadel-chaos/redis:latest /usr/bin/redis-server \
  '["/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--appendonly", "yes", "--appendfsync", "always", "--save", ""]'
build_image citadel-chaos/nats:latest /usr/sbin/nats-server \
  '["/bin/nats-server", "-js", "-sd", "/data", "-p", "4222"]'
[ -x "$citadel" ] || die "$citadel is missing: cargo build --release --features chaos --bin citadel"
strings "$citadel" | grep 'citadel chaos: killing the worker' >/dev/null \
  || die "$citadel was built without --features chaos"
build_image citadel-chaos/citadel:latest "$citadel" '["/bin/citadel"]' \
  "$(command -v dash):/bin/sh" "$(command -v sleep):/bin/sleep"

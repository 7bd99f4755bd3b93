#!/usr/bin/env bash
# The layers Cargo cannot state by itself: which crates must stay free of which
# others, through any path of normal dependencies. Cargo already forbids cycles
# and keeps each crate to what its Cargo.toml names; this fails when a crate
# low in the graph comes to depend, even indirectly, on a wire protocol, the
# command line or a database client (README, "Design").
#
#   scripts/check-layers.sh        (exit 1 and a line per violation)
set -euo pipefail
cd "$(dirname "$0")/.."

# The crates a package depends on (normal edges, any depth), one name a line.
deps() {
  cargo tree -q -e normal -p "$1" --prefix none --format '{p}' | awk '{print $1}' | sort -u
}

WIRE="axum hyper http tonic tower tower-http utoipa reqwest prost"
fail=0
check() {
  local crate="$1"; shift
  local have
  have="$(deps "$crate")"
  for banned in "$@"; do
    if grep -qx "$banned" <<<"$have"; then
      echo "layers: $crate depends on $banned"
      fail=1
    fi
  done
}

# The check's own control: a crate that does use the wire must be seen to,
# or an empty `cargo tree` answer would pass everything.
if ! deps inferd-api | grep -qx axum; then
  echo "layers: cargo tree did not list axum under inferd-api; the check is broken"
  exit 1
fi

# The core: no wire, no command line, no database or cache client.
check inferd-core $WIRE clap redis tokio-postgres deadpool-postgres
# What every layer shares, and the adapters below the front doors.
check inferd-telemetry $WIRE clap redis tokio-postgres inferd-core
check inferd-predlog $WIRE clap redis inferd-core
check inferd-cache-redis $WIRE clap tokio-postgres
check inferd-onnx $WIRE clap redis tokio-postgres
check inferd-torch $WIRE clap redis tokio-postgres
# The front doors take settings, not the command line.
check inferd-api clap redis

if [ "$fail" = 0 ]; then
  echo "layers: every crate within its bounds"
fi
exit "$fail"

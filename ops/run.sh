#!/usr/bin/env bash
# Run truc: make sure the broker is up, then `truc serve` (extra args passed on).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
cargo not found. Install Rust with rustup:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
  . "$HOME/.cargo/env"
MSG
    exit 1
fi

bash ops/ensure-broker.sh
exec cargo run --release --bin truc -- serve "$@"

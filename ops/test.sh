#!/usr/bin/env bash
# Run the test suite against a local broker. Extra args go to `cargo test`
# (e.g. ops/test.sh --test router). Tests use their own queue prefixes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found; install Rust with rustup: https://rustup.rs" >&2
    exit 1
fi

bash ops/ensure-broker.sh
exec cargo test --all-targets "$@" -- --test-threads=4

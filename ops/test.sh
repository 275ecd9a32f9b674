#!/usr/bin/env bash
# Run the test suite against a local broker and PostgreSQL. Extra args go to `cargo test`
# (e.g. ops/test.sh --test router). Tests use their own queue prefixes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found; install Rust with rustup: https://rustup.rs" >&2
    exit 1
fi

# tests/tls.rs makes certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "openssl not installed; installing with apt-get" >&2
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
    else
        echo "openssl not found: install it (Debian: sudo apt-get install openssl)" >&2
        exit 1
    fi
fi

bash ops/ensure-broker.sh
# The store's conformance suite and the shared-store tests run on PostgreSQL
# too: a throw-away database per test, made through this role.
if [[ -z "${TRUC_TEST_PG_URL:-}" ]]; then
    TRUC_TEST_PG_URL="$(bash ops/ensure-postgres.sh | grep -o 'postgres://[^ ]*' | tail -n1)"
    [[ -n "$TRUC_TEST_PG_URL" ]] || { echo "ops/ensure-postgres.sh printed no URL" >&2; exit 1; }
fi
export TRUC_TEST_PG_URL
exec cargo test --all-targets "$@" -- --test-threads=4

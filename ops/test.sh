#!/usr/bin/env bash
# Run the test suite against a local broker and PostgreSQL. Extra args go to `cargo test`
# (e.g. ops/test.sh --test router). Tests use their own queue prefixes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found; install Rust with rustup: https://rustup.rs" >&2
    exit 1
fi

# tests/tls.rs makes certificates with the openssl command; tests/gateway_client.rs
# runs a Python 3 client of the gateway (standard library only);
# tests/console_browser.rs drives the web console in Debian's chromium with
# playwright-core (Node.js).
for need in openssl:openssl python3:python3 node:nodejs npm:npm chromium:chromium; do
    cmd=${need%%:*} pkg=${need#*:}
    command -v "$cmd" >/dev/null 2>&1 && continue
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "$cmd not installed; installing $pkg with apt-get" >&2
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg"
    else
        echo "$cmd not found: install it (Debian: sudo apt-get install $pkg)" >&2
        exit 1
    fi
done

# playwright-core for the browser tests, at the version package-lock.json pins
# (it drives the chromium above; it downloads no browser).
if [[ ! -d tests/browser/node_modules/playwright-core ]] \
    || [[ tests/browser/package-lock.json -nt tests/browser/node_modules ]]; then
    npm ci --prefix tests/browser --no-audit --no-fund
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

#!/usr/bin/env bash
# Make sure a RabbitMQ broker is installed and running on 127.0.0.1:5672.
# Idempotent; returns at once when the broker already runs.
# TRUC_SKIP_BROKER=1 skips everything (broker runs elsewhere).
set -euo pipefail

HOST=127.0.0.1
PORT=5672
WAIT_SECS=90
NOFILE=65536
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_SRC="$HERE/rabbitmq"

say() { printf 'broker: %s\n' "$*"; }
die() { printf 'broker: ERROR: %s\n' "$*" >&2; exit 1; }

if [[ "${TRUC_SKIP_BROKER:-0}" == "1" ]]; then
    say "TRUC_SKIP_BROKER=1, not checking the local broker"
    exit 0
fi

# Prefix for commands that need root: nothing, or sudo.
ROOT=()
CAN_ROOT=1
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then ROOT=(sudo); else CAN_ROOT=0; fi
fi
need_root() { ((CAN_ROOT)) || die "need root (or sudo) to $1"; }
as_root() { ${ROOT[@]+"${ROOT[@]}"} "$@"; }
# Like as_root, but gives up after $1 seconds.
as_root_t() { local t="$1"; shift; timeout "$t" ${ROOT[@]+"${ROOT[@]}"} "$@"; }
have() { command -v "$1" >/dev/null 2>&1; }

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

# Copy $1 to $2 unless $2 already exists (never overwrite local config).
install_if_absent() {
    local src="$1" dst="$2"
    if as_root test -e "$dst"; then
        say "keeping existing $dst"
    else
        as_root install -D -m 0644 "$src" "$dst"
        say "installed $dst"
    fi
}

# Largest nofile hard limit this machine lets us set (capped at $NOFILE).
nofile_target() {
    local hard
    if (ulimit -H -n "$NOFILE") 2>/dev/null; then
        echo "$NOFILE"
        return
    fi
    hard="$(ulimit -H -n)"
    if [[ "$hard" == "unlimited" || "$hard" -gt "$NOFILE" ]]; then
        echo "$NOFILE"
    else
        echo "$hard"
    fi
}

show_logs() {
    local f
    for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
        if as_root test -s "$f"; then
            printf -- '--- %s (last 20 lines) ---\n' "$f" >&2
            as_root tail -n 20 "$f" >&2 || true
        fi
    done
    printf 'see also /var/log/rabbitmq/rabbit@*.log\n' >&2
}

# /usr/sbin may be missing from a non-root PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# 1. Install the package if missing.
if ! have rabbitmqctl || ! have rabbitmq-server; then
    say "rabbitmq-server not installed; installing with apt-get"
    need_root "install rabbitmq-server"
    have apt-get || die "apt-get not found; install rabbitmq-server by hand"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    have rabbitmqctl || die "rabbitmqctl still missing after apt-get install"
fi

# openssl makes the certificates of the TLS listener (ops/tls-broker.sh, tests/tls.rs).
if ! have openssl; then
    say "openssl not installed; installing with apt-get"
    need_root "install openssl"
    have apt-get || die "apt-get not found; install openssl by hand"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y openssl
fi

# 2. Already running?
if port_open; then
    if as_root_t 30 rabbitmqctl -q status >/dev/null 2>&1; then
        say "running"
        exit 0
    fi
    if ((!CAN_ROOT)); then
        say "running (port $HOST:$PORT open; not verified: rabbitmqctl needs root)"
        exit 0
    fi
    die "port $HOST:$PORT accepts connections but 'rabbitmqctl status' fails.
  Another process (or a broker managed elsewhere) holds the port.
  If that broker is what truc should use, set TRUC_SKIP_BROKER=1."
fi

# 3. Configure (only files that do not exist yet).
need_root "configure and start rabbitmq-server"
install_if_absent "$CONF_SRC/rabbitmq.conf" /etc/rabbitmq/rabbitmq.conf
install_if_absent "$CONF_SRC/rabbitmq-env.conf" /etc/rabbitmq/rabbitmq-env.conf
limits=/etc/security/limits.d/rabbitmq.conf
if as_root test -e "$limits"; then
    say "keeping existing $limits"
else
    n="$(nofile_target)"
    as_root mkdir -p "$(dirname "$limits")"
    sed "s/nofile 65536/nofile $n/" "$CONF_SRC/limits-rabbitmq.conf" | as_root tee "$limits" >/dev/null
    say "installed $limits (nofile $n)"
fi
ulimit -n "$NOFILE" 2>/dev/null || ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true

# 4. Start, unless a node is already booting. Under systemd use the unit
# (supervised, LimitNOFILE=65536); otherwise start a detached node.
if as_root_t 20 rabbitmqctl -q ping >/dev/null 2>&1; then
    say "node is up but not listening yet; waiting"
elif [[ -d /run/systemd/system ]] && have systemctl \
    && systemctl cat rabbitmq-server.service >/dev/null 2>&1; then
    say "starting rabbitmq-server.service (systemd)"
    as_root systemctl start --no-block rabbitmq-server.service \
        || die "systemctl start rabbitmq-server failed; see: journalctl -u rabbitmq-server"
else
    say "starting rabbitmq-server -detached"
    as_root rabbitmq-server -detached || { show_logs; die "rabbitmq-server -detached failed"; }
fi

# 5. Wait for the listener, then for the app to finish booting.
deadline=$((SECONDS + WAIT_SECS))
until port_open; do
    if ((SECONDS >= deadline)); then
        show_logs
        die "broker did not open $HOST:$PORT within ${WAIT_SECS}s
  (check the listeners in /etc/rabbitmq/rabbitmq.conf)"
    fi
    sleep 1
done
left=$((deadline - SECONDS))
if ((left < 5)); then left=5; fi
if ! as_root_t "$left" rabbitmqctl -q await_startup >/dev/null 2>&1; then
    show_logs
    die "broker listens on $HOST:$PORT but 'rabbitmqctl await_startup' failed"
fi
say "running (started)"

#!/usr/bin/env bash
# Make sure a RabbitMQ broker is installed and running on 127.0.0.1:5672.
# Idempotent: applies truc's broker settings on every run (restarting a
# running broker only when they changed) and returns at once otherwise.
# TRUC_SKIP_BROKER=1 skips everything (broker runs elsewhere);
# TRUC_BROKER_CONFIG_ONLY=1 applies the settings and does not start or
# restart the broker.
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

# 2. Configure. truc's settings live in a marked block of each broker file
# (written whole when the file is absent); a local setting with the same key
# is commented out, everything else in the file is kept. Applied on every
# run, so a broker that the package manager already started (Debian with
# systemd starts it on install) still gets them: CHANGED=1 then restarts it.
CHANGED=0
BEGIN_MARK="# BEGIN truc (ops/ensure-broker.sh manages this block)"
END_MARK="# END truc"
ETC="${TRUC_RABBITMQ_ETC:-/etc/rabbitmq}"
LIMITS="${TRUC_LIMITS_FILE:-/etc/security/limits.d/rabbitmq.conf}"
DROPIN_DIR=/etc/systemd/system/rabbitmq-server.service.d

# managed_block BLOCKFILE KIND < CURRENT: CURRENT with the truc block
# replaced by BLOCKFILE's lines. KIND=conf comments out DST's own lines that set a key
# the block sets (rabbitmq.conf must not set a key twice); KIND=env keeps
# them (the block comes last, and the last assignment wins in a shell).
managed_block() {
    local block="$1" kind="$2"
    awk -v kind="$kind" \
        -v begin="$BEGIN_MARK" -v end="$END_MARK" -v blockfile="$block" '
        function key(line) {
            if (line !~ /^[ \t]*[A-Za-z0-9_.]+[ \t]*=/) return ""
            sub(/^[ \t]*/, "", line); sub(/[ \t]*=.*/, "", line); return line
        }
        BEGIN {
            while ((getline l < blockfile) > 0) { blk[++n] = l; k = key(l); if (k != "") ours[k] = 1 }
        }
        $0 == begin { skip = 1; next }
        skip && $0 == end { skip = 0; next }
        skip { next }
        { k = key($0) }
        kind == "conf" && k != "" && (k in ours) { $0 = "# (set in the truc block below) " $0 }
        { last = $0; m++; print }
        END {
            if (m > 0 && last != "") print ""
            print begin
            for (i = 1; i <= n; i++) print blk[i]
            print end
        }'
}

# apply DST CONTENTFILE: installs CONTENTFILE as DST when they differ
# (keeping the first original as DST.truc-orig); CHANGED=1 when it did.
apply() {
    local dst="$1" new="$2"
    if as_root test -e "$dst" && as_root cmp -s "$new" "$dst"; then
        return 0
    fi
    if as_root test -e "$dst" && ! as_root test -e "$dst.truc-orig"; then
        as_root cp -p "$dst" "$dst.truc-orig"
        say "kept the original as $dst.truc-orig"
    fi
    as_root install -D -m 0644 "$new" "$dst"
    say "updated $dst"
    CHANGED=1
}

# Soft open-files limit of the running local broker, or nothing.
broker_nofile() {
    local pid
    pid="$(pgrep -u rabbitmq -f beam.smp 2>/dev/null | head -n1 || true)"
    [[ -n "$pid" ]] || return 0
    as_root awk '/^Max open files/ { print $4 }' "/proc/$pid/limits" 2>/dev/null || true
}

if port_open && ((!CAN_ROOT)); then
    say "running (port $HOST:$PORT open; config not checked: needs root)"
    exit 0
fi
need_root "configure and start rabbitmq-server"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The block: the shipped file without its opening comment paragraph.
awk 'body || !/^#/ { body = 1 } body && (printed || !/^$/) { printed = 1; print }' \
    "$CONF_SRC/rabbitmq.conf" >"$TMP/conf.block"
{ as_root cat "$ETC/rabbitmq.conf" 2>/dev/null || true; } \
    | managed_block "$TMP/conf.block" conf >"$TMP/rabbitmq.conf"
apply "$ETC/rabbitmq.conf" "$TMP/rabbitmq.conf"
# An existing node keeps its name (a new NODENAME means a new, empty data
# directory): the block holds only the open-files line; the rest of the
# shipped file is written only where no file exists.
grep '^ulimit' "$CONF_SRC/rabbitmq-env.conf" >"$TMP/env.block"
if as_root test -e "$ETC/rabbitmq-env.conf"; then
    as_root cat "$ETC/rabbitmq-env.conf"
else
    grep -v '^ulimit' "$CONF_SRC/rabbitmq-env.conf"
fi | managed_block "$TMP/env.block" env >"$TMP/rabbitmq-env.conf"
apply "$ETC/rabbitmq-env.conf" "$TMP/rabbitmq-env.conf"
n="$(nofile_target)"
sed "s/nofile 65536/nofile $n/" "$CONF_SRC/limits-rabbitmq.conf" >"$TMP/limits"
apply "$LIMITS" "$TMP/limits"
SYSTEMD=0
if [[ -d /run/systemd/system ]] && have systemctl \
    && systemctl cat rabbitmq-server.service >/dev/null 2>&1; then
    SYSTEMD=1
    printf '[Service]\nLimitNOFILE=%s\n' "$n" >"$TMP/dropin"
    before="$CHANGED"
    apply "$DROPIN_DIR/10-truc.conf" "$TMP/dropin"
    if ((CHANGED != before)); then as_root systemctl daemon-reload; fi
fi
ulimit -n "$NOFILE" 2>/dev/null || ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
if [[ "${TRUC_BROKER_CONFIG_ONLY:-0}" == "1" ]]; then
    say "config applied (changed: $CHANGED); TRUC_BROKER_CONFIG_ONLY=1, not starting"
    exit 0
fi

# 3. Already running? Restart it when its config changed.
if port_open; then
    as_root_t 30 rabbitmqctl -q status >/dev/null 2>&1 \
        || die "port $HOST:$PORT accepts connections but 'rabbitmqctl status' fails.
  Another process (or a broker managed elsewhere) holds the port.
  If that broker is what truc should use, set TRUC_SKIP_BROKER=1."
    if ((!CHANGED)); then
        have_n="$(broker_nofile)"
        if [[ -n "$have_n" && "$have_n" != "unlimited" && "$have_n" -lt "$n" ]]; then
            say "WARNING: the broker runs with an open-files limit of $have_n (configured: $n);"
            say "  restart it to apply: systemctl restart rabbitmq-server (or rabbitmqctl shutdown; rabbitmq-server -detached)"
        fi
        say "running"
        exit 0
    fi
    say "config changed; restarting the broker to apply it"
    if ((SYSTEMD)); then
        as_root_t 180 systemctl restart rabbitmq-server.service \
            || die "systemctl restart rabbitmq-server failed; see: journalctl -u rabbitmq-server"
    else
        as_root_t 120 rabbitmqctl -q shutdown >/dev/null 2>&1 \
            || die "'rabbitmqctl shutdown' failed; restart the broker by hand to apply the config"
    fi
fi

# 4. Start, unless a node is already booting. Under systemd use the unit
# (supervised, with the LimitNOFILE drop-in); otherwise start a detached node.
if as_root_t 20 rabbitmqctl -q ping >/dev/null 2>&1; then
    say "node is up but not listening yet; waiting"
elif port_open; then
    say "restarted by systemd; waiting"
elif ((SYSTEMD)); then
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

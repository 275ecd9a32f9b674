#!/usr/bin/env bash
# A local RabbitMQ cluster of N nodes on other ports, beside the standard
# broker on 5672 (for cluster tests and demos on one machine).
#
#   ops/broker-cluster.sh start  [N]   start N nodes (default 3) and join them
#   ops/broker-cluster.sh status       cluster status, seen from each node
#   ops/broker-cluster.sh urls         the AMQP URLs, comma-separated (TRUC_AMQP_URL)
#   ops/broker-cluster.sh stop-node I  stop node I (1-based) only: a node loss
#   ops/broker-cluster.sh start-node I start node I again (it rejoins)
#   ops/broker-cluster.sh stop         stop every node
#   ops/broker-cluster.sh purge        stop every node and delete their data
#
# Node I is `truc-cN@localhost`, AMQP on 127.0.0.1:$((BASE_PORT + I)), Erlang
# distribution on $((DIST_BASE + I)); its data, logs and config live in
# $TRUC_CLUSTER_DIR/nI (default /var/tmp/truc-cluster). The nodes share an
# Erlang cookie through HOME=$TRUC_CLUSTER_DIR/home. They run Debian's
# /usr/lib/rabbitmq/bin/rabbitmq-server directly (the /usr/sbin wrapper
# switches user and resets the open-files limit). Needs rabbitmq-server
# installed (ops/ensure-broker.sh does it) and root, like the wrapper.
set -euo pipefail

DIR="${TRUC_CLUSTER_DIR:-/var/tmp/truc-cluster}"
BASE_PORT="${TRUC_CLUSTER_BASE_PORT:-5680}"
DIST_BASE="${TRUC_CLUSTER_DIST_BASE:-25680}"
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
CTL=/usr/lib/rabbitmq/bin/rabbitmqctl
WAIT_SECS=90

say() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: ERROR: %s\n' "$*" >&2; exit 1; }

node() { printf 'truc-c%s@localhost' "$1"; }
port() { echo $((BASE_PORT + $1)); }
ctl() { local i="$1"; shift; HOME="$DIR/home" ERL_EPMD_ADDRESS=127.0.0.1 "$CTL" -n "$(node "$i")" "$@"; }
nodes() { local n; n="$(cat "$DIR/nodes" 2>/dev/null || echo 0)"; seq 1 "$n"; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Writes node I's config and starts it detached.
start_node() {
    local i="$1" d="$DIR/n$1"
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(port "$i")
loopback_users.guest = true
consumer_timeout = 1800000
channel_max = 4096
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
cluster_partition_handling = pause_minority
EOF
    # Quorum delay buckets dead-letter at least once (queues/cluster): a held
    # delivery whose hop to the release queue was not confirmed (its leader
    # was moving off a stopped node) is sent again after this, not after the
    # broker's default of 180 s, during which the bucket's dead-lettering
    # stalls behind it (docs/CLUSTER.md).
    cat >"$d/advanced.config" <<EOF
[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].
EOF
    echo '[].' >"$d/enabled_plugins"
    : >"$d/rabbitmq-env.conf"
    ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
    HOME="$DIR/home" ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_NODENAME="$(node "$i")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(port "$i")" \
        RABBITMQ_DIST_PORT=$((DIST_BASE + i)) \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/node.pid" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        "$SERVER" -detached
}

# Waits until node I has booted and listens.
wait_node() {
    local i="$1" deadline=$((SECONDS + WAIT_SECS))
    until port_open "$(port "$i")"; do
        ((SECONDS < deadline)) || die "node $(node "$i") did not listen on $(port "$i") within ${WAIT_SECS}s; see $DIR/n$i/log"
        sleep 1
    done
    ctl "$i" -q await_startup >/dev/null 2>&1 \
        || die "node $(node "$i") listens but did not finish booting; see $DIR/n$i/log"
}

cmd_start() {
    local n="${1:-3}"
    [[ "$n" =~ ^[1-9]$ ]] || die "N must be 1-9, not '$n'"
    [[ -x "$SERVER" ]] || die "$SERVER is missing: run ops/ensure-broker.sh first"
    [[ "$(id -u)" -eq 0 ]] || die "run as root (the nodes' data lives in $DIR)"
    mkdir -p "$DIR/home"
    chmod 0700 "$DIR" "$DIR/home"
    if [[ ! -s "$DIR/home/.erlang.cookie" ]]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
        chmod 0400 "$DIR/home/.erlang.cookie"
    fi
    echo "$n" >"$DIR/nodes"
    local i
    for i in $(nodes); do
        if port_open "$(port "$i")"; then
            say "$(node "$i") already runs on $(port "$i")"
        else
            say "starting $(node "$i") on 127.0.0.1:$(port "$i")"
            start_node "$i"
        fi
    done
    for i in $(nodes); do wait_node "$i"; done
    for i in $(nodes); do
        ((i == 1)) && continue
        if ctl "$i" -q cluster_status --formatter json 2>/dev/null | grep -q "$(node 1)"; then
            continue
        fi
        say "joining $(node "$i") to $(node 1)"
        ctl "$i" -q stop_app
        ctl "$i" -q join_cluster "$(node 1)"
        ctl "$i" -q start_app
    done
    say "running: $(cmd_urls)"
}

cmd_status() {
    local i
    for i in $(nodes); do
        if port_open "$(port "$i")"; then
            printf '%s (port %s): ' "$(node "$i")" "$(port "$i")"
            ctl "$i" -q cluster_status --formatter json 2>/dev/null \
                | grep -o '"running_nodes":\[[^]]*\]' | head -1 || echo "not answering"
        else
            printf '%s (port %s): down\n' "$(node "$i")" "$(port "$i")"
        fi
    done
}

cmd_urls() {
    local i urls=()
    for i in $(nodes); do urls+=("amqp://guest:guest@127.0.0.1:$(port "$i")/%2f"); done
    (IFS=,; echo "${urls[*]}")
}

stop_node() {
    local i="$1"
    if port_open "$(port "$i")" || ctl "$i" -q ping >/dev/null 2>&1; then
        say "stopping $(node "$i")"
        ctl "$i" -q shutdown >/dev/null 2>&1 || true
    fi
}

case "${1:-}" in
    start) cmd_start "${2:-3}" ;;
    status) cmd_status ;;
    urls) cmd_urls ;;
    stop-node) stop_node "${2:?node number}" ;;
    start-node)
        i="${2:?node number}"
        start_node "$i"
        wait_node "$i"
        say "$(node "$i") is back"
        ;;
    stop) for i in $(nodes); do stop_node "$i"; done ;;
    purge)
        for i in $(nodes); do stop_node "$i"; done
        rm -rf "$DIR"
        say "removed $DIR"
        ;;
    *)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac

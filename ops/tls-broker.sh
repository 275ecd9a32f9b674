#!/usr/bin/env bash
# A TLS listener (AMQPS, port 5671) on the broker for agencies on other
# networks, with a private CA.
#
#   tls-broker.sh certs DIR [NAME...]   make DIR/ca.pem + ca.key (kept if present)
#                                       and DIR/server.pem + server.key for NAMEs
#                                       (DNS names or IP addresses; default: this
#                                       host's FQDN, localhost, 127.0.0.1)
#   tls-broker.sh conf DIR [PORT] [verify_none|verify_peer]
#                                       print the rabbitmq.conf lines for DIR
#   tls-broker.sh install [NAME...]     as root: certs in /etc/rabbitmq/tls, the
#                                       lines appended to /etc/rabbitmq/rabbitmq.conf
#                                       (once); then restart the broker yourself
#   tls-broker.sh client DIR CN         a client certificate DIR/CN.pem + CN.key
#                                       signed by the CA (for verify_peer)
#
# Needs openssl (installed with apt-get when missing and run as root).
# The CA key (ca.key) signs every certificate: keep it off the broker host
# once the certificates are made.
set -euo pipefail

DAYS="${TRUC_TLS_DAYS:-825}"
KEY_BITS="${TRUC_TLS_KEY_BITS:-3072}"

say() { printf 'tls-broker: %s\n' "$*" >&2; }
die() { printf 'tls-broker: ERROR: %s\n' "$*" >&2; exit 1; }

need_openssl() {
    command -v openssl >/dev/null 2>&1 && return
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "openssl not installed; installing with apt-get"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >&2
    fi
    command -v openssl >/dev/null 2>&1 \
        || die "openssl not found: install it (Debian: apt-get install openssl)"
}

is_ip() { [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$1" == *:* ]]; }

# certs DIR NAME...
make_certs() {
    local dir="$1"; shift
    local names=("$@")
    if ((${#names[@]} == 0)); then
        names=("$(hostname -f 2>/dev/null || hostname)" localhost 127.0.0.1)
    fi
    need_openssl
    mkdir -p "$dir"
    chmod 0755 "$dir"
    local old_umask; old_umask="$(umask)"
    umask 077
    if [[ ! -s "$dir/ca.pem" || ! -s "$dir/ca.key" ]]; then
        openssl req -x509 -newkey "rsa:$KEY_BITS" -sha256 -nodes -days "$DAYS" \
            -subj "/O=truc/CN=truc private CA $(date -u +%Y%m%d%H%M%S)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null \
            || die "openssl could not make the CA in $dir"
        say "made CA $dir/ca.pem"
    else
        say "keeping CA $dir/ca.pem"
    fi
    local san="" n
    for n in "${names[@]}"; do
        if is_ip "$n"; then san+="${san:+,}IP:$n"; else san+="${san:+,}DNS:$n"; fi
    done
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
        "$san" >"$dir/server.ext"
    openssl req -newkey "rsa:$KEY_BITS" -sha256 -nodes -subj "/O=truc/CN=${names[0]}" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null \
        || die "openssl could not make the server key"
    openssl x509 -req -sha256 -days "$DAYS" -in "$dir/server.csr" \
        -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null \
        || die "openssl could not sign the server certificate"
    rm -f "$dir/server.csr" "$dir/server.ext"
    umask "$old_umask"
    chmod 0644 "$dir/ca.pem" "$dir/server.pem"
    chmod 0600 "$dir/ca.key" "$dir/server.key"
    say "made $dir/server.pem for $san"
}

# client DIR CN
make_client() {
    local dir="$1" cn="$2"
    need_openssl
    [[ -s "$dir/ca.pem" && -s "$dir/ca.key" ]] || die "no CA in $dir (run: certs $dir)"
    (
        umask 077
        printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$dir/$cn.ext"
        openssl req -newkey "rsa:$KEY_BITS" -sha256 -nodes -subj "/O=truc/CN=$cn" \
            -keyout "$dir/$cn.key" -out "$dir/$cn.csr" 2>/dev/null
        openssl x509 -req -sha256 -days "$DAYS" -in "$dir/$cn.csr" -CA "$dir/ca.pem" \
            -CAkey "$dir/ca.key" -CAcreateserial -extfile "$dir/$cn.ext" -out "$dir/$cn.pem" 2>/dev/null
        rm -f "$dir/$cn.csr" "$dir/$cn.ext"
    ) || die "openssl could not make the client certificate"
    say "made $dir/$cn.pem"
}

# conf DIR PORT VERIFY
print_conf() {
    local dir="$1" port="${2:-5671}" verify="${3:-verify_none}"
    case "$verify" in
        verify_none) fail=false ;;
        verify_peer) fail=true ;;
        *) die "verify must be verify_none or verify_peer" ;;
    esac
    cat <<EOF
# AMQPS for agencies (made by ops/tls-broker.sh). Open only this port in the
# firewall; the plaintext listener stays on loopback.
listeners.ssl.default = $port
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
# verify_none: agencies authenticate with user/password inside TLS.
# verify_peer + fail_if_no_peer_cert: they also need a client certificate
# signed by this CA (tls-broker.sh client).
ssl_options.verify = $verify
ssl_options.fail_if_no_peer_cert = $fail
EOF
}

install_tls() {
    [[ "$(id -u)" -eq 0 ]] || die "install needs root"
    local dir=/etc/rabbitmq/tls conf=/etc/rabbitmq/rabbitmq.conf
    make_certs "$dir" "$@"
    if id rabbitmq >/dev/null 2>&1; then
        chown root:rabbitmq "$dir/server.key"
        chmod 0640 "$dir/server.key"
    fi
    if grep -q '^listeners.ssl.default' "$conf" 2>/dev/null; then
        say "keeping the TLS listener already in $conf"
    else
        { printf '\n'; print_conf "$dir" 5671 "${TRUC_TLS_VERIFY:-verify_none}"; } >>"$conf"
        say "added the TLS listener to $conf"
    fi
    say "restart the broker (systemctl restart rabbitmq-server, or rabbitmqctl shutdown && rabbitmq-server -detached)"
    say "then hand $dir/ca.pem to agencies; check with: openssl s_client -connect HOST:5671 -CAfile $dir/ca.pem </dev/null"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    certs) (($# >= 1)) || die "usage: certs DIR [NAME...]"; make_certs "$@" ;;
    conf) (($# >= 1)) || die "usage: conf DIR [PORT] [verify_none|verify_peer]"; print_conf "$@" ;;
    client) (($# == 2)) || die "usage: client DIR CN"; make_client "$@" ;;
    install) install_tls "$@" ;;
    *) die "usage: tls-broker.sh certs|conf|client|install ... (see the header of this script)" ;;
esac

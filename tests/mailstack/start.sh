#!/usr/bin/env bash
# Start the mailgate test mail stack (Dovecot + Postfix on loopback high
# ports, private configs under $MAILSTACK_DIR, default /tmp/mailgate-stack).
# Idempotent: if the stack of this root is already up, healthy and built from
# the current templates, it exits 0 at once. Otherwise it stops leftovers,
# regenerates configs (keeping the CA and the mailboxes), starts both daemons,
# waits for real greetings on every port and writes $MAILSTACK_DIR/env.
# See README.md in this directory.
set -euo pipefail
# A closed stdout (e.g. `| head -1`) must not kill us half-way.
trap '' PIPE
umask 022

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE=$MAILSTACK_HERE
START_TIMEOUT=${MAILSTACK_START_TIMEOUT:-30}
PACKAGES=(dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix openssl redis-server python3)

ms_require_root "$@"
ms_check_root_path

mkdir -p "$ROOT" "$LOG_DIR"
chmod 755 "$ROOT" "$LOG_DIR"

# Serialize concurrent callers (e.g. pytest-xdist workers). The daemons must
# not inherit fd 9, or they would hold the lock for their whole life.
exec 9>"$ROOT/lock"
flock 9

# ---------------------------------------------------------------- packages
if ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'; then
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
fi
ms_install_packages "$LOG_DIR/apt.log" "dovecot postfix" \
    "/run/dovecot/master.pid /var/spool/postfix/pid/master.pid" "${PACKAGES[@]}"

# ---------------------------------------------------------- fast path
# Everything that shapes the running stack: templates, scripts, ports, root.
fingerprint() {
    {
        cat "$HERE"/start.sh "$HERE"/lib.sh "$HERE"/probe.py "$HERE"/*.in
        echo "$ROOT $IMAP_PORT $IMAPS_PORT $POP3_PORT $POP3S_PORT $SUBMISSION_PORT $SMTPS_PORT $SMTP_PLAIN_PORT"
        echo "$CONDSTORE_IMAPS_PORT $BASIC_IMAPS_PORT $REDIS_PORT"
    } | sha256sum | cut -d' ' -f1
}
FINGERPRINT=$(fingerprint)

PROBE_TARGETS=(
    "imap:imap:$IMAP_PORT" "imaps:imaps:$IMAPS_PORT"
    "pop3:pop3:$POP3_PORT" "pop3s:pop3s:$POP3S_PORT"
    "submission:smtp:$SUBMISSION_PORT" "smtps:smtps:$SMTPS_PORT"
    "smtp-plain:smtp:$SMTP_PLAIN_PORT"
    "imaps-condstore:imaps:$CONDSTORE_IMAPS_PORT" "imaps-basic:imaps:$BASIC_IMAPS_PORT"
    "redis:redis:$REDIS_PORT"
)

summary() {
    ms_say "$1"
    ms_say "  IMAP $HOST:$IMAP_PORT (plain+STARTTLS)  IMAPS :$IMAPS_PORT  POP3 :$POP3_PORT (plain+STLS)  POP3S :$POP3S_PORT"
    ms_say "  SMTP submission :$SUBMISSION_PORT (STARTTLS)  SMTPS :$SMTPS_PORT  plain AUTH :$SMTP_PLAIN_PORT"
    ms_say "  Redis :$REDIS_PORT (no persistence)"
    ms_say "  IMAPS without QRESYNC :$CONDSTORE_IMAPS_PORT  IMAPS without CONDSTORE, QRESYNC, IDLE :$BASIC_IMAPS_PORT"
    ms_say "  users: any <name>@$DOMAIN and sink@sink.test, password '$PASSWORD'; mail to other domains -> sink@sink.test"
    ms_say "  CA: $ROOT/tls/ca.pem  env: $ROOT/env  logs: $LOG_DIR/"
}

if [ -f "$ROOT/env" ] && [ -f "$ROOT/fingerprint" ] \
    && [ "$(cat "$ROOT/fingerprint")" = "$FINGERPRINT" ] \
    && [ "$(ms_masters | wc -l)" -eq $((2 + ${#VARIANTS[@]})) ] && [ -n "$(ms_redis_pid)" ] \
    && python3 "$HERE/probe.py" "$HOST" "$ROOT/tls/ca.pem" "${PROBE_TARGETS[@]}" 9>&- 2>/dev/null; then
    summary "already running and healthy ($ROOT)"
    exit 0
fi

T0=$(date +%s.%N)

# ---------------------------------------------------------- clean up
ms_stop_stack
rm -f "$ROOT/fingerprint" "$ROOT/env"
rm -rf "$ROOT/run" "$ROOT/etc" "$ROOT/postfix" "$ROOT/state" "$REDIS_DIR"
LOGS=(dovecot.log dovecot.stderr postfix.log postfix.stderr redis.log)
for v in "${VARIANTS[@]}"; do LOGS+=("dovecot-$v.log"); done
for f in "${LOGS[@]}"; do
    [ -f "$LOG_DIR/$f" ] && mv -f "$LOG_DIR/$f" "$LOG_DIR/$f.old"
done
mkdir -p "$ROOT/run" "$ROOT/etc" "$POSTFIX_DIR" "$ROOT/postfix" "$ROOT/state/dovecot" "$ROOT/tls"
for v in "${VARIANTS[@]}"; do mkdir -p "$ROOT/state/dovecot-$v"; done
chmod 755 "$ROOT/run" "$ROOT/etc" "$POSTFIX_DIR" "$ROOT/postfix"
# Postfix creates the queue subdirectories (post-install create-missing),
# but not the queue and data directories themselves.
install -d -m 755 -o root -g root "$ROOT/postfix/spool"
install -d -m 700 -o postfix -g postfix "$ROOT/postfix/data"
chmod 755 "$ROOT/tls"   # ca.pem must be readable by test processes of any user

# ---------------------------------------------------------- certificates
TLS=$ROOT/tls
if [ ! -s "$TLS/ca.pem" ] || [ ! -s "$TLS/ca.key" ]; then
    ms_say "generating test CA $TLS/ca.pem"
    cat >"$TLS/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = mailgate mailstack test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -config "$TLS/ca.cnf" -keyout "$TLS/ca.key.tmp" -out "$TLS/ca.pem.tmp" 2>/dev/null
    chmod 600 "$TLS/ca.key.tmp"
    chmod 644 "$TLS/ca.pem.tmp"
    mv -f "$TLS/ca.key.tmp" "$TLS/ca.key"
    mv -f "$TLS/ca.pem.tmp" "$TLS/ca.pem"
    rm -f "$TLS/server.pem"
fi
if [ ! -s "$TLS/server.pem" ] || [ ! -s "$TLS/server.key" ] \
    || ! openssl verify -CAfile "$TLS/ca.pem" "$TLS/server.pem" >/dev/null 2>&1 \
    || ! openssl x509 -checkend 2592000 -noout -in "$TLS/server.pem" >/dev/null 2>&1; then
    ms_say "generating server certificate for localhost"
    cat >"$TLS/server.ext" <<'EOF'
[v3]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl req -new -newkey rsa:2048 -nodes -subj /CN=localhost \
        -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
    openssl x509 -req -sha256 -days 825 -in "$TLS/server.csr" \
        -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$TLS/server.ext" -extensions v3 -out "$TLS/server.pem" 2>/dev/null
    chmod 600 "$TLS/server.key"
    chmod 644 "$TLS/server.pem"
    rm -f "$TLS/server.csr"
fi

# ---------------------------------------------------------- configs
# IPv6 loopback may be absent (trap 12): bind ::1 only when it exists.
if grep -qi '^0\{31\}1 ' /proc/net/if_inet6 2>/dev/null; then
    LISTEN="127.0.0.1, ::1"
    INET_INTERFACES="127.0.0.1, [::1]"
    INET_PROTOCOLS="ipv4, ipv6"
else
    LISTEN="127.0.0.1"
    INET_INTERFACES="127.0.0.1"
    INET_PROTOCOLS="ipv4"
fi
SSL_DH_LINE=""
[ -r /usr/share/dovecot/dh.pem ] && SSL_DH_LINE="ssl_dh = </usr/share/dovecot/dh.pem"

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }
SED_ARGS=()
for kv in \
    "ROOT=$ROOT" "LISTEN=$LISTEN" "INET_INTERFACES=$INET_INTERFACES" \
    "INET_PROTOCOLS=$INET_PROTOCOLS" "DOMAIN=$DOMAIN" 'DOMAIN_RE=example\.test' \
    "MAIL_UID=$MAIL_UID" "MAIL_GID=$MAIL_GID" "SSL_DH_LINE=$SSL_DH_LINE" \
    "IMAP_PORT=$IMAP_PORT" "IMAPS_PORT=$IMAPS_PORT" "POP3_PORT=$POP3_PORT" \
    "POP3S_PORT=$POP3S_PORT" "SUBMISSION_PORT=$SUBMISSION_PORT" \
    "SMTPS_PORT=$SMTPS_PORT" "SMTP_PLAIN_PORT=$SMTP_PLAIN_PORT"; do
    SED_ARGS+=(-e "s|@${kv%%=*}@|$(sed_escape "${kv#*=}")|g")
done
render() { # template output
    sed "${SED_ARGS[@]}" "$1" >"$2"
    if grep -q '@[A-Z_0-9]*@' "$2"; then
        ms_die "unrendered placeholder in $2: $(grep -o '@[A-Z_0-9]*@' "$2" | sort -u | tr '\n' ' ')"
    fi
}
render "$HERE/dovecot.conf.in" "$DOVECOT_CONF"
# The variants' capability lists: Dovecot 2.3's own, less what each one lacks.
BASIC_CAPS="IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT THREAD=REFERENCES MULTIAPPEND"
BASIC_CAPS="$BASIC_CAPS UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH"
BASIC_CAPS="$BASIC_CAPS SEARCHRES WITHIN LIST-STATUS BINARY MOVE LITERAL+ SPECIAL-USE"
for v in "${VARIANTS[@]}"; do
    case $v in
        condstore) port=$CONDSTORE_IMAPS_PORT caps="$BASIC_CAPS IDLE CONDSTORE" ;;
        basic) port=$BASIC_IMAPS_PORT caps=$BASIC_CAPS ;;
    esac
    sed -e "s|@VARIANT@|$v|g" -e "s|@VARIANT_PORT@|$port|g" -e "s|@VARIANT_CAPS@|$caps|g" \
        "$HERE/dovecot-variant.conf.in" >"$ROOT/etc/dovecot-$v.conf.in"
    render "$ROOT/etc/dovecot-$v.conf.in" "$ROOT/etc/dovecot-$v.conf"
    rm -f "$ROOT/etc/dovecot-$v.conf.in"
done
render "$HERE/main.cf.in" "$POSTFIX_DIR/main.cf"
render "$HERE/master.cf.in" "$POSTFIX_DIR/master.cf"
render "$HERE/virtual_alias.regexp.in" "$POSTFIX_DIR/virtual_alias.regexp"
printf '%s:{PLAIN}%s\n' "$DOMAIN" "$PASSWORD" >"$ROOT/etc/passdb-domains.txt"
printf '%s:{PLAIN}%s\n' "sink@sink.test" "$PASSWORD" >"$ROOT/etc/passdb-users.txt"
chmod 644 "$ROOT"/etc/passdb-*.txt
# Trap 4: Postfix distrusts config files modified in the last seconds.
touch -d '-1 minute' "$POSTFIX_DIR"/* "$ROOT"/etc/*.txt "$ROOT"/etc/dovecot*.conf

# Mailboxes (kept across restarts; tests use fresh addresses), owned by the
# numeric mail uid, which need not exist in /etc/passwd.
mkdir -p "$ROOT/mail" "$ROOT/home"
chown "$MAIL_UID:$MAIL_GID" "$ROOT/mail" "$ROOT/home"
chmod 750 "$ROOT/mail" "$ROOT/home"

# ---------------------------------------------------------- start
# Log files readable by the (possibly unprivileged) test processes.
for f in "${LOGS[@]}"; do
    : >"$LOG_DIR/$f"
    chmod 644 "$LOG_DIR/$f"
done
# Trap 3: daemons keep the stdio they start with; never give them a pipe.
dovecot -c "$DOVECOT_CONF" </dev/null >>"$LOG_DIR/dovecot.stderr" 2>&1 9>&- \
    || { tail -n 20 "$LOG_DIR/dovecot.stderr" "$LOG_DIR/dovecot.log" >&2 2>/dev/null; ms_die "dovecot failed to start"; }
for v in "${VARIANTS[@]}"; do
    dovecot -c "$ROOT/etc/dovecot-$v.conf" </dev/null >>"$LOG_DIR/dovecot.stderr" 2>&1 9>&- \
        || { tail -n 20 "$LOG_DIR/dovecot.stderr" >&2; ms_die "dovecot ($v) failed to start"; }
done
postfix -c "$POSTFIX_DIR" start </dev/null >>"$LOG_DIR/postfix.stderr" 2>&1 9>&- \
    || { tail -n 20 "$LOG_DIR/postfix.stderr" "$LOG_DIR/postfix.log" >&2 2>/dev/null; ms_die "postfix failed to start"; }

# Redis (the state gateway replicas share, in tests): loopback only, no
# persistence, daemonized with a pidfile in its own directory.
mkdir -p "$REDIS_DIR"
REDIS_BIND=127.0.0.1
[ "$LISTEN" = "127.0.0.1" ] || REDIS_BIND="127.0.0.1 -::1"
cat >"$REDIS_DIR/redis.conf" <<EOF
bind $REDIS_BIND
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_DIR/redis.pid
logfile $LOG_DIR/redis.log
dir $REDIS_DIR
save ""
appendonly no
EOF
redis-server "$REDIS_DIR/redis.conf" </dev/null >>"$LOG_DIR/redis.log" 2>&1 9>&- \
    || { tail -n 20 "$LOG_DIR/redis.log" >&2 2>/dev/null; ms_die "redis-server failed to start"; }

if ! python3 "$HERE/probe.py" --wait "$START_TIMEOUT" "$HOST" "$TLS/ca.pem" "${PROBE_TARGETS[@]}" 9>&-; then
    for f in dovecot.stderr dovecot.log postfix.stderr postfix.log redis.log; do
        [ -s "$LOG_DIR/$f" ] && { echo "---- $LOG_DIR/$f (tail)"; tail -n 25 "$LOG_DIR/$f"; } >&2
    done
    ms_die "mail stack did not answer on every port within ${START_TIMEOUT}s (logs in $LOG_DIR)"
fi

# ---------------------------------------------------------- env file
cat >"$ROOT/env.tmp" <<EOF
export MAILSTACK_DIR=$ROOT
export MAILSTACK_CA_FILE=$TLS/ca.pem
export MAILSTACK_HOST=$HOST
export MAILSTACK_IMAP_PORT=$IMAP_PORT
export MAILSTACK_IMAPS_PORT=$IMAPS_PORT
export MAILSTACK_POP3_PORT=$POP3_PORT
export MAILSTACK_POP3S_PORT=$POP3S_PORT
export MAILSTACK_SUBMISSION_PORT=$SUBMISSION_PORT
export MAILSTACK_SMTPS_PORT=$SMTPS_PORT
export MAILSTACK_SMTP_PLAIN_PORT=$SMTP_PLAIN_PORT
export MAILSTACK_REDIS_PORT=$REDIS_PORT
export MAILSTACK_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export MAILSTACK_CONDSTORE_IMAPS_PORT=$CONDSTORE_IMAPS_PORT
export MAILSTACK_BASIC_IMAPS_PORT=$BASIC_IMAPS_PORT
export MAILSTACK_DOMAIN=$DOMAIN
export MAILSTACK_PASSWORD=$PASSWORD
export MAILSTACK_SINK_ADDRESS=sink@sink.test
export MAILGATE_SMTP_URL=smtp://localhost:$SUBMISSION_PORT
export MAILGATE_IMAP_URL=imaps://localhost:$IMAPS_PORT
export MAILGATE_POP3_URL=pop3s://localhost:$POP3S_PORT
export MAILGATE_CA_FILE=$TLS/ca.pem
EOF
chmod 644 "$ROOT/env.tmp"
mv -f "$ROOT/env.tmp" "$ROOT/env"
echo "$FINGERPRINT" >"$ROOT/fingerprint"

T1=$(date +%s.%N)
summary "started in $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }')s ($ROOT)"

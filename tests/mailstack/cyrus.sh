#!/usr/bin/env bash
# Start a private Cyrus IMAP 3.6 (IMAP, IMAPS, POP3, POP3S) on loopback high ports,
# next to the Dovecot + Postfix stack of the same root ($MAILSTACK_DIR), so that the
# gateway's tests can run against a second real mail server (`make test-cyrus`).
#
# - Debian 12 packages: cyrus-common and sasl2-bin installed with apt if missing (their
#   system services stay stopped and disabled). cyrus-imapd and cyrus-pop3d (imapd,
#   pop3d, idled) CONFLICT with dovecot-imapd/dovecot-pop3d, so installing them would
#   remove the Dovecot of every stack on the machine: they are downloaded and unpacked
#   into $MAILSTACK_DIR/cyrus/pkg instead, never installed.
# - Logins: saslauthd's "rimap" mechanism checks every password against the Dovecot
#   stack's IMAP port, so the users are the stack's users: any <name>@example.test
#   and password "secret", anything else refused. The INBOX is created at the first
#   login (autocreate_quota), with Sent, Drafts, Trash, Junk and Archive.
# - Debian's default namespace: personal folders under "INBOX." with "." as the
#   hierarchy separator (altnamespace: no, unixhierarchysep: no), virtual domains from
#   the login name; POP3 UIDLs are UIDVALIDITY.UID; at most 10 sessions per user.
#   Deleted folders go at once (delete_mode: immediate): the default keeps them as
#   DELETED.<name>.<seconds>, so a second DELETE of one name within a second fails.
# - TLS from the stack's CA; test messages are put in place with IMAP APPEND.
# Idempotent (fast when up and built from this script); `stop.sh` stops it too.
# Writes $MAILSTACK_DIR/cyrus/env (MAILSTACK_CYRUS_* ports).
set -euo pipefail
trap '' PIPE
umask 022

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE=$MAILSTACK_HERE
START_TIMEOUT=${MAILSTACK_START_TIMEOUT:-30}
PACKAGES=(cyrus-common sasl2-bin)
UNPACKED=(cyrus-imapd cyrus-pop3d)

ms_require_root "$@"
ms_check_root_path

# The Dovecot stack first: its CA signs our certificate and its IMAP port checks
# our passwords. (start.sh is idempotent and fast when the stack is up.)
bash "$HERE/start.sh" </dev/null 9>&-

mkdir -p "$CYRUS_ROOT"
chmod 755 "$CYRUS_ROOT"
exec 9>"$CYRUS_ROOT/lock"
flock 9

# ---------------------------------------------------------------- packages
ms_install_packages "$LOG_DIR/apt-cyrus.log" "cyrus-imapd saslauthd" \
    "/run/cyrus-master.pid /run/saslauthd/saslauthd.pid" "${PACKAGES[@]}"

# imapd, pop3d and idled from the .deb files, unpacked (see above), of the version of
# the installed cyrus-common (they link against its libraries).
C=$CYRUS_ROOT
unpack_servers() {
    local version p
    version=$(dpkg-query -W -f='${Version}' cyrus-common)
    if [ "$(cat "$C/pkg/version" 2>/dev/null)" = "$version" ] \
        && [ -x "$C/pkg/usr/lib/cyrus/bin/imapd" ] && [ -x "$C/pkg/usr/lib/cyrus/bin/pop3d" ]; then
        return 0
    fi
    ms_say "unpacking ${UNPACKED[*]} $version into $C/pkg (not installed: they conflict with Dovecot)"
    rm -rf "$C/pkg" "$C/deb"
    mkdir -p "$C/deb"
    for p in "${UNPACKED[@]}"; do
        (cd "$C/deb" && apt-get download -q "$p=$version") </dev/null >>"$LOG_DIR/apt-cyrus.log" 2>&1 9>&- \
            || { (cd "$C/deb" && DEBIAN_FRONTEND=noninteractive apt-get update -q \
                  && apt-get download -q "$p=$version") </dev/null >>"$LOG_DIR/apt-cyrus.log" 2>&1 9>&-; } \
            || ms_die "apt-get download $p=$version failed (log: $LOG_DIR/apt-cyrus.log)"
    done
    for f in "$C"/deb/*.deb; do
        dpkg-deb -x "$f" "$C/pkg"
    done
    rm -rf "$C/deb"
    chmod 755 "$C/pkg"
    echo "$version" >"$C/pkg/version"
}
unpack_servers
BIN=$C/pkg/usr/lib/cyrus/bin
SBIN=/usr/lib/cyrus/bin

PROBE_TARGETS=(
    "cyrus-imap:imap:$CYRUS_IMAP_PORT" "cyrus-imaps:imaps:$CYRUS_IMAPS_PORT"
    "cyrus-pop3:pop3:$CYRUS_POP3_PORT" "cyrus-pop3s:pop3s:$CYRUS_POP3S_PORT"
)
fingerprint() {
    {
        cat "$HERE/cyrus.sh" "$HERE/lib.sh" "$HERE/probe.py"
        echo "$ROOT $CYRUS_IMAP_PORT $CYRUS_IMAPS_PORT $CYRUS_POP3_PORT $CYRUS_POP3S_PORT $IMAP_PORT"
        cat "$ROOT/tls/server.pem"
    } | sha256sum | cut -d' ' -f1
}
FINGERPRINT=$(fingerprint)
summary() {
    ms_say "$1"
    ms_say "  Cyrus IMAP $HOST:$CYRUS_IMAP_PORT (plain+STARTTLS)  IMAPS :$CYRUS_IMAPS_PORT  POP3 :$CYRUS_POP3_PORT  POP3S :$CYRUS_POP3S_PORT"
    ms_say "  users: the stack's (any <name>@$DOMAIN, password '$PASSWORD'), checked over IMAP :$IMAP_PORT"
    ms_say "  env: $C/env  logs: $LOG_DIR/cyrus.log"
}
if [ -f "$C/env" ] && [ "$(cat "$C/fingerprint" 2>/dev/null)" = "$FINGERPRINT" ] \
    && [ -n "$(ms_cyrus_pids)" ] \
    && python3 "$HERE/probe.py" "$HOST" "$ROOT/tls/ca.pem" "${PROBE_TARGETS[@]}" 9>&- 2>/dev/null; then
    summary "Cyrus already running and healthy ($C)"
    exit 0
fi

T0=$(date +%s.%N)
ms_stop_cyrus
rm -f "$C/env" "$C/fingerprint"
# Mailboxes and databases go with a restart: tests use fresh addresses anyway, and a
# clean configdirectory never meets a database of another version or setting.
rm -rf "$C/etc" "$C/lib" "$C/spool" "$C/run" "$C/sasl"  # not pkg
mkdir -p "$C/etc" "$C/lib/db" "$C/lib/socket" "$C/lib/sieve" "$C/spool" "$C/run/socket" "$C/run/proc" "$C/run/lock" "$C/sasl"
chown -R cyrus:mail "$C/lib" "$C/spool" "$C/run"
chmod 750 "$C/lib" "$C/spool"
chmod 755 "$C/run" "$C/etc" "$C/sasl"

install -m 644 -o cyrus -g mail "$ROOT/tls/server.pem" "$C/etc/server.pem"
install -m 600 -o cyrus -g mail "$ROOT/tls/server.key" "$C/etc/server.key"
install -m 644 -o cyrus -g mail "$ROOT/tls/ca.pem" "$C/etc/ca.pem"

cat >"$C/etc/imapd.conf" <<EOF
configdirectory: $C/lib
proc_path: $C/run/proc
mboxname_lockpath: $C/run/lock
defaultpartition: default
partition-default: $C/spool
lmtpsocket: $C/run/socket/lmtp
idlesocket: $C/run/socket/idle
notifysocket: $C/run/socket/notify
sievedir: $C/lib/sieve
admins: cyrus
altnamespace: no
unixhierarchysep: no
virtdomains: userid
allowplaintext: yes
sasl_pwcheck_method: saslauthd
sasl_saslauthd_path: $C/sasl/mux
sasl_mech_list: PLAIN LOGIN
autocreate_quota: 0
autocreate_post: 1
autocreate_inbox_folders: Sent | Drafts | Trash | Junk | Archive
autocreate_subscribe_folders: Sent | Drafts | Trash | Junk | Archive
xlist-sent: Sent
xlist-drafts: Drafts
xlist-trash: Trash
xlist-junk: Junk
xlist-archive: Archive
maxlogins_per_user: 10
delete_mode: immediate
uidl_format: cyrus
popminpoll: 0
tls_server_cert: $C/etc/server.pem
tls_server_key: $C/etc/server.key
tls_client_ca_file: $C/etc/ca.pem
syslog_prefix: cyrus-mailstack
EOF
# Every command names our imapd.conf: master does not pass its -C on to them.
cat >"$C/etc/cyrus.conf" <<EOF
START {
    recover cmd="$SBIN/ctl_cyrusdb -C $C/etc/imapd.conf -r"
}
SERVICES {
    imap     cmd="$BIN/imapd -C $C/etc/imapd.conf" listen="$HOST:$CYRUS_IMAP_PORT" prefork=0 maxchild=100
    imaps    cmd="$BIN/imapd -C $C/etc/imapd.conf -s" listen="$HOST:$CYRUS_IMAPS_PORT" prefork=0 maxchild=100
    pop3     cmd="$BIN/pop3d -C $C/etc/imapd.conf" listen="$HOST:$CYRUS_POP3_PORT" prefork=0 maxchild=50
    pop3s    cmd="$BIN/pop3d -C $C/etc/imapd.conf -s" listen="$HOST:$CYRUS_POP3S_PORT" prefork=0 maxchild=50
    lmtpunix cmd="$SBIN/lmtpd -C $C/etc/imapd.conf" listen="$C/run/socket/lmtp" prefork=0 maxchild=5
}
EVENTS {
    checkpoint cmd="$SBIN/ctl_cyrusdb -C $C/etc/imapd.conf -c" period=30
}
DAEMON {
    idled cmd="$BIN/idled -C $C/etc/imapd.conf"
}
EOF
chmod 644 "$C/etc/imapd.conf" "$C/etc/cyrus.conf"

: >"$LOG_DIR/cyrus.log"
chmod 644 "$LOG_DIR/cyrus.log"
# saslauthd: the rimap mechanism logs in to the Dovecot stack's IMAP port, with
# user@realm (-r) as the login name.
/usr/sbin/saslauthd -a rimap -r -O "$HOST/$IMAP_PORT" -m "$C/sasl" -n 2 \
    </dev/null >>"$LOG_DIR/cyrus.log" 2>&1 9>&- \
    || ms_die "saslauthd failed to start (log: $LOG_DIR/cyrus.log)"
chmod 755 "$C/sasl"
# Cyrus's master binds the ports as root, then runs every service as the cyrus user.
"$SBIN/master" -C "$C/etc/imapd.conf" -M "$C/etc/cyrus.conf" -p "$C/run/master.pid" \
    -l 64 -d -L "$LOG_DIR/cyrus.log" </dev/null >>"$LOG_DIR/cyrus.log" 2>&1 9>&- \
    || ms_die "Cyrus master failed to start (log: $LOG_DIR/cyrus.log)"

if ! python3 "$HERE/probe.py" --wait "$START_TIMEOUT" "$HOST" "$ROOT/tls/ca.pem" "${PROBE_TARGETS[@]}" 9>&-; then
    tail -n 30 "$LOG_DIR/cyrus.log" >&2
    ms_die "Cyrus did not answer on every port within ${START_TIMEOUT}s (log: $LOG_DIR/cyrus.log)"
fi

cat >"$C/env.tmp" <<EOF
export MAILSTACK_CYRUS_IMAP_PORT=$CYRUS_IMAP_PORT
export MAILSTACK_CYRUS_IMAPS_PORT=$CYRUS_IMAPS_PORT
export MAILSTACK_CYRUS_POP3_PORT=$CYRUS_POP3_PORT
export MAILSTACK_CYRUS_POP3S_PORT=$CYRUS_POP3S_PORT
export MAILSTACK_CYRUS_LMTP_SOCKET=$C/run/socket/lmtp
EOF
chmod 644 "$C/env.tmp"
mv -f "$C/env.tmp" "$C/env"
echo "$FINGERPRINT" >"$C/fingerprint"
T1=$(date +%s.%N)
summary "Cyrus started in $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }')s ($C)"

# Shared by start.sh, cyrus.sh and stop.sh (sourced, not executed).
# shellcheck shell=bash

MAILSTACK_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ROOT=${MAILSTACK_DIR:-/tmp/mailgate-stack}
ROOT=${ROOT%/}
HOST=127.0.0.1
DOMAIN=example.test
PASSWORD=secret
MAIL_UID=5000
MAIL_GID=5000

IMAP_PORT=${MAILSTACK_IMAP_PORT:-31143}
IMAPS_PORT=${MAILSTACK_IMAPS_PORT:-31993}
POP3_PORT=${MAILSTACK_POP3_PORT:-31110}
POP3S_PORT=${MAILSTACK_POP3S_PORT:-31995}
SUBMISSION_PORT=${MAILSTACK_SUBMISSION_PORT:-31587}
SMTPS_PORT=${MAILSTACK_SMTPS_PORT:-31465}
SMTP_PLAIN_PORT=${MAILSTACK_SMTP_PLAIN_PORT:-31025}
REDIS_PORT=${MAILSTACK_REDIS_PORT:-31379}
# Two more Dovecot instances on the same mailboxes (IMAPS only) that advertise
# less: no QRESYNC ("condstore"), and no CONDSTORE, QRESYNC or IDLE ("basic").
CONDSTORE_IMAPS_PORT=${MAILSTACK_CONDSTORE_IMAPS_PORT:-31994}
BASIC_IMAPS_PORT=${MAILSTACK_BASIC_IMAPS_PORT:-31996}
VARIANTS=(condstore basic)

DOVECOT_CONF=$ROOT/etc/dovecot.conf
POSTFIX_DIR=$ROOT/etc/postfix
LOG_DIR=$ROOT/log
REDIS_DIR=$ROOT/redis

ms_say() { printf 'mailstack: %s\n' "$*" 2>/dev/null || true; }
ms_die() { printf 'mailstack: ERROR: %s\n' "$*" >&2; exit 1; }

ms_require_root() {
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            exec sudo -n -E bash "$0" "$@"
        fi
        ms_die "must run as root (Dovecot and Postfix need it); try sudo"
    fi
}

ms_check_root_path() {
    case $ROOT in
        /*) ;;
        *) ms_die "MAILSTACK_DIR must be an absolute path (got '$ROOT')" ;;
    esac
    # Unix socket paths must stay under 108 bytes; the longest we create is
    # about 45 bytes below ROOT (Dovecot login sockets, Postfix private/).
    if [ "${#ROOT}" -gt 60 ]; then
        ms_die "MAILSTACK_DIR '$ROOT' is too long (${#ROOT} > 60 bytes): unix socket paths would exceed 108 bytes"
    fi
    # Every existing parent must be traversable by dovecot/dovenull/postfix.
    local d=$ROOT mode
    while d=$(dirname "$d"); [ "$d" != / ]; do
        [ -d "$d" ] || continue
        mode=$(stat -c %A "$d")
        case ${mode:9:1} in
            x|t) ;;
            *) ms_die "parent directory $d ($mode) is not traversable by other users; choose a MAILSTACK_DIR outside it (e.g. under /tmp)" ;;
        esac
    done
}

# A process is alive unless gone or a zombie (trap 9: re-parented masters
# linger as zombies, and /proc/PID still exists then).
ms_alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    case ${stat%% *} in
        Z|X|x) return 1 ;;
    esac
    return 0
}

# PIDs of this root's Dovecot masters (their command lines name our configs)
# and Postfix master (its environment carries MAIL_CONFIG=our config dir).
ms_masters() {
    local p pid comm
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        read -r comm 2>/dev/null <"$p/comm" || continue
        case $comm in
            dovecot)
                if ms_alive "$pid" && tr '\0' ' ' 2>/dev/null <"$p/cmdline" \
                    | grep -qE -- "-c $ROOT/etc/dovecot(-[a-z]+)?\.conf "; then
                    echo "$pid"
                fi
                ;;
            master)
                if ms_alive "$pid" && tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxF "MAIL_CONFIG=$POSTFIX_DIR"; then
                    echo "$pid"
                fi
                ;;
        esac
    done
    return 0
}

# Direct children of the given PIDs (Dovecot and Postfix service processes).
ms_children() {
    local p pid stat ppid want
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        read -r stat 2>/dev/null <"$p/stat" || continue
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        for want in "$@"; do
            [ "$ppid" = "$want" ] && echo "$pid"
        done
    done
    return 0
}

# Wait until none of the PIDs is alive; after $1 seconds send SIGKILL.
ms_wait_gone() {
    local limit=$1 pid waited=0 left
    shift
    while :; do
        left=()
        for pid in "$@"; do
            ms_alive "$pid" && left+=("$pid")
        done
        [ "${#left[@]}" -eq 0 ] && return 0
        if [ "$waited" -ge $((limit * 20)) ]; then
            ms_say "still running after ${limit}s, sending SIGKILL: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            limit=$((limit + 5))
        fi
        sleep 0.05
        waited=$((waited + 1))
    done
}
# Install the Debian packages of "$@" that are missing, for a stack that runs its own
# daemons on high ports: package scripts may not start the system daemons (a
# policy-rc.d where none exists), apt's progress shows one line per package step and
# goes whole to LOG, and afterwards the system UNITS are disabled for the next boot and
# any instance that started anyway (its PIDFILES) is stopped.
# Usage: ms_install_packages LOG "UNIT..." "PIDFILE..." PACKAGE...
ms_install_packages() {
    local log=$1 units=$2 pidfiles=$3
    shift 3
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0

    ms_say "installing ${missing[*]} (log: $log)"
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    echo 1 >"$log.rc"
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
            "${missing[@]}" || rc=$?
        echo "$rc" >"$log.rc"
    } </dev/null 2>&1 9>&- | tee -a "$log" \
        | grep --line-buffered -E '^(Get:|Unpacking |Setting up )' \
        | sed -u 's/^/mailstack:   /' || true
    rc=$(cat "$log.rc")
    rm -f "$log.rc"
    if [ "$own_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if [ "$rc" != 0 ]; then
        tail -n 30 "$log" >&2
        ms_die "apt-get failed (exit $rc), see $log"
    fi
    local unit pidfile pid
    for unit in $units; do
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --quiet "$unit.service" >>"$log" 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
            update-rc.d "$unit" disable >>"$log" 2>&1 || true
        fi
    done
    ms_say "installed; system units disabled: $units (this stack runs its own)"
    for pidfile in $pidfiles; do
        if [ -r "$pidfile" ] && read -r pid <"$pidfile" && ms_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            ms_wait_gone 10 "$pid"
        fi
    done
    return 0
}


# PID of this root's redis-server (from its pidfile, checked against /proc).
ms_redis_pid() {
    local pid comm
    [ -r "$REDIS_DIR/redis.pid" ] && read -r pid 2>/dev/null <"$REDIS_DIR/redis.pid" || return 0
    read -r comm 2>/dev/null <"/proc/$pid/comm" || return 0
    if [ "$comm" = redis-server ] && ms_alive "$pid"; then
        echo "$pid"
    fi
    return 0
}

ms_stop_redis() {
    local pid
    pid=$(ms_redis_pid)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    ms_wait_gone 10 "$pid"
    rm -f "$REDIS_DIR/redis.pid"
    ms_say "stopped Redis of $ROOT (pid $pid)"
}

ms_stop_stack() {
    local masters children
    ms_stop_redis
    masters=$(ms_masters)
    [ -n "$masters" ] || return 0
    # shellcheck disable=SC2086
    children=$(ms_children $masters)
    # shellcheck disable=SC2086
    kill -TERM $masters 2>/dev/null || true
    # shellcheck disable=SC2086
    ms_wait_gone 10 $masters
    # Service processes notice their master is gone and exit; make sure,
    # so that the ports are free when we return.
    if [ -n "$children" ]; then
        # shellcheck disable=SC2086
        ms_wait_gone 5 $children
    fi
    ms_say "stopped Dovecot/Postfix of $ROOT (pids $(echo $masters))"
}

# The private Cyrus IMAP of this root (cyrus.sh): ports and processes.
CYRUS_ROOT=$ROOT/cyrus
CYRUS_IMAP_PORT=${MAILSTACK_CYRUS_IMAP_PORT:-31243}
CYRUS_IMAPS_PORT=${MAILSTACK_CYRUS_IMAPS_PORT:-31293}
CYRUS_POP3_PORT=${MAILSTACK_CYRUS_POP3_PORT:-31210}
CYRUS_POP3S_PORT=${MAILSTACK_CYRUS_POP3S_PORT:-31295}

# PIDs of this root's Cyrus master (its command line names our imapd.conf) and
# saslauthd processes (their command lines name our socket directory).
ms_cyrus_pids() {
    local p pid comm
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        read -r comm 2>/dev/null <"$p/comm" || continue
        case $comm in
            master|saslauthd)
                if ms_alive "$pid" && tr '\0' ' ' 2>/dev/null <"$p/cmdline" \
                    | grep -qE -- "(-C $CYRUS_ROOT/etc/imapd\.conf|-m $CYRUS_ROOT/sasl) "; then
                    echo "$pid"
                fi
                ;;
        esac
    done
    return 0
}

ms_stop_cyrus() {
    local pids children
    pids=$(ms_cyrus_pids)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    children=$(ms_children $pids)
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    ms_wait_gone 10 $pids
    if [ -n "$children" ]; then
        # shellcheck disable=SC2086
        ms_wait_gone 5 $children
    fi
    rm -f "$CYRUS_ROOT/env" "$CYRUS_ROOT/fingerprint"
    ms_say "stopped Cyrus of $ROOT (pids $(echo $pids))"
}

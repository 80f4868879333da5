#!/usr/bin/env bash
# Stop the Dovecot, Postfix (and Cyrus, if cyrus.sh started one) of this mail stack root ($MAILSTACK_DIR,
# default /tmp/mailgate-stack) and wait until they are really gone.
# Idempotent. With --purge also delete the whole root (CA, mailboxes, logs).
set -euo pipefail
# A closed stdout (e.g. `| head -1`) must not kill us half-way.
trap '' PIPE

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PURGE=0
case ${1:-} in
    --purge) PURGE=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

ms_require_root "$@"

if [ ! -d "$ROOT" ]; then
    ms_say "nothing to stop ($ROOT does not exist)"
    exit 0
fi

exec 9>"$ROOT/lock"
flock 9

ms_stop_cyrus
ms_stop_stack
rm -f "$ROOT/env" "$ROOT/fingerprint"
if [ "$PURGE" = 1 ]; then
    rm -rf "$ROOT"
    ms_say "removed $ROOT"
else
    ms_say "mail stack of $ROOT is stopped"
fi

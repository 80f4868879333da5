"""The words of a mail server's temporary refusals, for replies without a response code.

RFC 5530 (IMAP) and RFC 2449/3206 (POP3) give refusals a machine-readable code, but
not every server sends one for every refusal. Cyrus IMAP 3.6 refuses a login past
``maxlogins_per_user`` with a bare ``NO Too many open connections (10 of 10 for
USER)`` (IMAP) and ``-ERR Too many open connections (11 of 10 for USER)`` (POP3);
Exchange throttles with ``NO Server Unavailable. 15``. Read as a refused password,
such a reply would answer 401 and count as a failed login. Likewise Cyrus answers a
MOVE, COPY or APPEND to a folder that does not exist with a bare ``NO Mailbox does
not exist`` where RFC 3501 §6.4.7 asks for ``[TRYCREATE]``: a missing folder (404),
not a server fault (502). Pure functions, shared by
the IMAP and POP3 adapters and the session pool.
"""

from __future__ import annotations

import re

_CONNECTION_LIMIT = re.compile(
    r"maximum number of (?:connections|sessions)"
    r"|too many (?:open |concurrent |simultaneous )?(?:connections|sessions|logins)"
    r"|too many simultaneous",
    re.IGNORECASE,
)
_NO_SUCH_MAILBOX = re.compile(
    r"\b(?:mailbox|folder)\b[^.]*\b(?:does not|doesn't) exist\b"
    r"|\bno such (?:mailbox|folder)\b|\b(?:mailbox|folder) not found\b"
    r"|\bunknown (?:mailbox|folder)\b",
    re.IGNORECASE,
)
_TEMPORARY = re.compile(
    r"\b(?:unavailable|try again later|temporar(?:y|ily)|throttl\w*)\b", re.IGNORECASE
)


def says_connection_limit(text: str) -> bool:
    """True when a refusal's text says the user holds too many connections (the
    server's per-user limit: Dovecot ``Maximum number of connections``, Cyrus ``Too
    many open connections``)."""
    return bool(_CONNECTION_LIMIT.search(text))


def says_temporary(text: str) -> bool:
    """True when a refusal without a response code still means "not now" rather than
    "no": a connection limit, or words such as "unavailable", "try again later"."""
    return says_connection_limit(text) or bool(_TEMPORARY.search(text))


def says_no_such_mailbox(text: str) -> bool:
    """True when a refusal without a response code says the folder it names does not
    exist (Cyrus ``Mailbox does not exist``, others ``No such mailbox``)."""
    return bool(_NO_SUCH_MAILBOX.search(text))

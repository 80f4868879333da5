"""A corpus of real-world and broken mail through list, fetch, raw and every attachment,
on IMAP and POP3: no 5xx, the raw bytes exactly the server's, every attachment's size
the length of its decoded bytes (and those bytes the same on both protocols).

The corpus: CPython's own email test messages (``test/test_email/data/msg_*.txt`` of
the interpreter running the tests; Debian ships them in libpython3.11-testsuite), the
shared cases of issue 8 and a few more built here.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

CASES = Path(__file__).resolve().parent.parent / "data" / "cases"


def cpython_corpus() -> list[Path]:
    try:
        import test  # the interpreter's own test package
    except ImportError:
        found: list[Path] = []
    else:
        data = Path(test.__file__).parent / "test_email" / "data"
        found = sorted(data.glob("msg_*.txt"))
    if not found:
        pytest.fail(
            "CPython's email test messages are missing: install libpython3.11-testsuite "
            "(Debian), as .ci/run does"
        )
    return found


BUILT = [
    # an attached message whose own multipart is unclosed, inside a closed one
    b"Subject: nested unclosed\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Type: multipart/mixed; "
    b"boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nin\r\n--a\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(b"\x00\x01after")
    + b"\r\n--a--\r\n",
    # quoted-printable with soft breaks, a lone "=" and bare LF line ends
    b"Subject: qp\nContent-Type: multipart/mixed; boundary=q\n\n--q\nContent-Type: text/plain"
    b"\nContent-Transfer-Encoding: quoted-printable\n\nsoft=\nbreak =3D=\n\n--q\n"
    b"Content-Type: application/x-qp\nContent-Transfer-Encoding: quoted-printable\n"
    b"Content-Disposition: attachment; filename*=utf-8''%E2%9C%93.bin\n\nA=00B=FF=\n--q--\n",
    # a boundary that is a prefix of an inner one, and an empty part
    b'Subject: prefix\r\nContent-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
    b'Content-Type: multipart/alternative; boundary="xy"\r\n\r\n--xy\r\nContent-Type: text/plain'
    b"\r\n\r\nalt\r\n--xy--\r\n--x\r\n--x\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--x--\r\n",
]


def corpus() -> list[bytes]:
    script = CASES / "many-parts.py"
    many = subprocess.run([sys.executable, str(script), "300"], check=True,
                          stdout=subprocess.PIPE).stdout  # fmt: skip
    return (
        [p.read_bytes() for p in cpython_corpus()]
        + [p.read_bytes() for p in sorted(CASES.glob("*.eml"))]
        + BUILT
        + [many]
    )


@pytest.mark.timeout(400)  # Cyrus: every part is cut from the whole message (see open_part)
async def test_corpus_through_every_endpoint(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    conn = mailbox.imap(stack)
    refused = 0
    try:
        for raw in corpus():
            typ, data = conn.append("INBOX", None, None, raw)
            if typ != "OK" and stack["MAILSTACK_SERVER"] == "cyrus":
                # Cyrus refuses a message whose first line is not a header (two of
                # CPython's corpus): "NO Message contains invalid header".
                assert b"invalid header" in data[0], data
                refused += 1
                continue
            assert typ == "OK", data
    finally:
        conn.logout()
    assert refused <= 2
    stored = {raw for _, raw, _ in mailbox.messages(stack)}  # the server's own bytes
    r = await client.get("/v1/messages", params={"protocol": proto, "limit": 200},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == len(stored) and r.json()["next_cursor"] is None
    parts = 0
    for item in items:
        url = f"/v1/messages/{item['id']}"
        r = await client.get(url, headers=mailbox.auth)
        assert r.status_code == 200, (item["subject"], r.text[:300])
        full = r.json()
        assert full["subject"] == item["subject"] and full["message_id"] == item["message_id"]
        assert [a["address"] for a in full["from"]] == [a["address"] for a in item["from"]]
        r = await client.get(f"{url}/raw", headers=mailbox.auth)
        assert r.status_code == 200 and r.content in stored, item["subject"]
        for att in full["attachments"]:
            r = await client.get(f"{url}/attachments/{att['id']}", headers=mailbox.auth)
            assert r.status_code == 200, (item["subject"], att, r.text[:300])
            assert len(r.content) == att["size"], (item["subject"], att)
            parts += 1
    assert parts > 300  # the corpus has attachments to check

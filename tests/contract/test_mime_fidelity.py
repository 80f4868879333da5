"""Mail as it really is (issue 8), on IMAP and POP3: one header decoder for the listing
and the fetch, parts cut from the server's bytes, every base64 block, raw 8-bit headers
in the declared charset, budgets for parts and depth.

Each kind is tried with the shared example (tests/data/cases) and further inputs of the
same kind; the right values are written out, and the server's own bytes (read with
imaplib) are the reference for parts.
"""

from __future__ import annotations

import base64
import binascii
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

# Cyrus (munge8bit, its default) stores every raw 8-bit byte of a header as "X": the
# bytes these tests decode never reach the gateway there.
CYRUS_MUNGES_8BIT = pytest.mark.dovecot("Cyrus stores raw 8-bit header bytes as 'X' (munge8bit)")

CASES = Path(__file__).resolve().parent.parent / "data" / "cases"


def case(name: str) -> bytes:
    return (CASES / name).read_bytes()


async def only_item(client: Any, box: Mailbox, proto: str) -> dict[str, Any]:
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=box.auth)
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    return dict(item)


async def fetch(client: Any, box: Mailbox, msg_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/messages/{msg_id}", headers=box.auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def part(client: Any, box: Mailbox, msg_id: str, section: str) -> bytes:
    r = await client.get(f"/v1/messages/{msg_id}/attachments/{section}", headers=box.auth)
    assert r.status_code == 200, (section, r.text)
    return bytes(r.content)


def server_part(box: Mailbox, stack: dict[str, str], section: str) -> bytes:
    """The server's own BODY[section] of the mailbox's only message (imaplib)."""
    conn = box.imap(stack)
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("FETCH", "1:*", f"(BODY.PEEK[{section}])")
        assert typ == "OK" and data and isinstance(data[0], tuple)
        return bytes(data[0][1])
    finally:
        conn.logout()


# ---------------------------------------------------------------- 1. one header decoder

NEWLINE_NAMES = [
    (  # the shared example: Q-encoded LF and CRLF in names and subject
        case("name-with-encoded-newline.eml"),
        "Invoice number 42",
        [("Support Team Billing", "billing@other.test")],
        [("Alice Example", "alice@example.test"), (None, "bob@example.test")],
    ),
    (  # B-encoded CR, TAB, NUL, DEL, C1 and a line separator; a comment name with LF
        b"From: =?utf-8?b?"
        + base64.b64encode("Ops\r\tTeam\x00\x7f\x85X\u2028Y".encode())
        + b"?= <ops@other.test>\r\n"
        b"To: bob@example.test (=?utf-8?q?Bob=0ABuilder?=), =?utf-8?q?=0A?= <c@example.test>\r\n"
        b"Subject: =?utf-8?b?" + base64.b64encode(b"one\r\ntwo\rthree\nfour") + b"?=\r\n"
        b"Message-ID: <ctl@other.test>\r\nDate: Mon, 30 Nov 2026 10:10:00 +0000\r\n\r\nx\r\n",
        "one two three four",
        [("Ops Team X Y", "ops@other.test")],
        [("Bob Builder", "bob@example.test"), (None, "c@example.test")],
    ),
]


@pytest.mark.parametrize("raw, subject, sender, to", NEWLINE_NAMES, ids=["case", "controls"])
async def test_listing_and_fetch_decode_headers_alike(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str,
    raw: bytes, subject: str, sender: list[Any], to: list[Any],
) -> None:  # fmt: skip
    mailbox.append(stack, raw)
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    for view in (item, full):
        assert view["subject"] == subject
        assert [(a["name"], a["address"]) for a in view["from"]] == sender
        assert [(a["name"], a["address"]) for a in view["to"]] == to
        for a in view["from"] + view["to"]:
            assert a["name"] is None or a["name"].isprintable()


# ---------------------------------------------------------------- 2. exact part bytes

FORWARDED_LF_INNER = (  # an attached message with odd spacing, folding and no final CRLF
    b"From: fw@other.test\r\nTo: alice@example.test\r\nSubject: fw odd\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="o"\r\n\r\n'
    b"--o\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b'--o\r\nContent-Type: message/rfc822; name="orig.eml"\r\n\r\n'
    b"Subject:no space\r\nX-Odd:    lots   of   space   \r\nFrom:\r\n\t<orig@other.test>\r\n"
    b"\r\nbody line 1\r\n\r\n\r\nlast line without break"
    b"\r\n--o\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"Subject: inside base64\r\n\r\nhi\r\n").replace(b"\n", b"\r\n")
    + b"--o--\r\n"
)


DIGEST = (  # RFC 2046 5.1.5: a digest's parts are messages unless they say otherwise; the
    # inner boundary "dd" starts with the digest's own "d" (the longer open one wins)
    b"From: list@other.test\r\nTo: alice@example.test\r\nSubject: digest\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d0\r\n\r\n"
    b"--d0\r\nContent-Type: text/plain\r\n\r\nToC\r\n"
    b"--d0\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n"
    b"--d\r\n\r\nFrom: one@other.test\r\nSubject: one\r\n\r\nfirst message\r\n"
    b"--d\r\n\r\nFrom: two@other.test\r\nSubject: two\r\n"
    b"Content-Type: multipart/alternative; boundary=dd\r\n\r\n"
    b"--dd\r\nContent-Type: text/plain\r\n\r\nalt\r\n--dd--\r\n"
    b"--d\r\nContent-Type: text/plain\r\n\r\nnot a message\r\n--d--\r\n--d0--\r\n"
)


@pytest.mark.parametrize("limit", [None, 4096], ids=["parsed-path", "over-the-limit"])
@pytest.mark.parametrize(
    "raw, sections",
    [
        (case("forwarded-message-part.eml"), ["2", "3"]),
        (FORWARDED_LF_INNER, ["2"]),
        (DIGEST, ["2.1", "2.2", "2.3"]),
    ],
    ids=["case", "odd-spacing", "digest"],
)
async def test_attached_message_is_the_servers_bytes(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str,
    raw: bytes, sections: list[str], limit: int | None,
) -> None:  # fmt: skip
    """BODY[n] semantics: the attached message byte for byte (DKIM c=simple holds)."""
    mailbox.append(stack, raw)
    overrides = {"max_message_bytes": limit} if limit else {}
    async with make_client(**overrides) as client:
        item = await only_item(client, mailbox, proto)
        sizes = {}
        if limit is None:
            full = await fetch(client, mailbox, item["id"])
            sizes = {a["id"]: a["size"] for a in full["attachments"]}
        for section in sections:
            got = await part(client, mailbox, item["id"], section)
            assert got == server_part(mailbox, stack, section)
            assert sizes.get(section, len(got)) == len(got)
    if raw is DIGEST and limit is None:
        kinds = [(a["id"], a["content_type"]) for a in full["attachments"]]
        assert kinds == [("2.1", "message/rfc822"), ("2.2", "message/rfc822"),
                         ("2.3", "text/plain")]  # fmt: skip
        assert full["text"] == "ToC" and sizes == {"2.1": 51, "2.2": 135, "2.3": 13}
    if raw is FORWARDED_LF_INNER:
        assert got.endswith(b"last line without break")  # the boundary's CRLF is not ours
        async with make_client() as client:
            b64 = await part(client, mailbox, item["id"], "3")
        assert b64 == b"Subject: inside base64\r\n\r\nhi\r\n"  # decoded by its encoding only


UU_DATA = bytes(range(256)) * 2


async def test_uuencoded_part_is_decoded_by_its_encoding(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    """x-uuencode is a transfer encoding too (the standard library decodes it)."""
    lines = b"".join(binascii.b2a_uu(UU_DATA[i : i + 45]) for i in range(0, 512, 45))
    mailbox.append(
        stack,
        b"From: a@other.test\r\nTo: alice@example.test\r\nSubject: uu\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="u"\r\n\r\n'
        b"--u\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--u\r\n"
        b"Content-Type: application/octet-stream; name=d.bin\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 d.bin\r\n"
        + lines.replace(b"\n", b"\r\n")
        + b"`\r\nend\r\n--u--\r\n",
    )
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    assert [(a["id"], a["size"]) for a in full["attachments"]] == [("2", len(UU_DATA))]
    assert await part(client, mailbox, item["id"], "2") == UU_DATA


# ---------------------------------------------------------------- 3. every base64 block

FOOTER = b"-- \r\nList: team@lists.other.test\r\n"


def blocks(*chunks: bytes, per_line: bool = True) -> bytes:
    encoded = [base64.b64encode(c) for c in chunks]
    return b"\r\n".join(encoded) if per_line else b"".join(encoded)


THREE_BLOCK_HTML = (
    b"From: list@other.test\r\nTo: alice@example.test\r\nSubject: three blocks\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
    b"--a\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + blocks("<p>Grüße</p>".encode(), b"<p>two</p>", b"<hr>", per_line=False)
    + b"\r\n--a--\r\n"
)

UNPADDED = (  # the only irregularity: the last group has no padding
    b"From: a@other.test\r\nTo: alice@example.test\r\nSubject: unpadded\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="u"\r\n\r\n'
    b"--u\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--u\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(b"\x00\x01ABC").rstrip(b"=")
    + b"\r\n--u--\r\n"
)


@pytest.mark.parametrize(
    "raw, text, html, attachment",
    [
        (
            case("base64-two-blocks.eml"),
            "Hallo zusammen,\nder Termin steht am Montag.\n-- \nListe: team@lists.other.test\n"
            "Abmelden: https://lists.other.test/u\n",
            None,
            ("2", bytes(range(100)) + b"SECOND-CHUNK-" + bytes(range(0xC8, 0x100))),
        ),
        (THREE_BLOCK_HTML, None, "<p>Grüße</p><p>two</p><hr>", None),
        (UNPADDED, "see attached", None, ("2", b"\x00\x01ABC")),
    ],
    ids=["case", "three-blocks-one-line", "unpadded"],
)
async def test_every_base64_block_is_decoded(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str,
    raw: bytes, text: str | None, html: str | None, attachment: tuple[str, bytes] | None,
) -> None:  # fmt: skip
    mailbox.append(stack, raw)
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    assert full["text"] == text and full["html"] == html
    assert any(d.startswith("InvalidBase64PaddingDefect") for d in full["defects"])
    if attachment is not None:
        section, content = attachment
        [att] = full["attachments"]
        assert (att["id"], att["size"]) == (section, len(content))
        assert await part(client, mailbox, item["id"], section) == content


# ---------------------------------------------------------------- 4. raw 8-bit headers

RAW_8BIT = [
    (  # KOI8-R, single part: the top-level charset
        "Subject: Отчёт за квартал\r\nFrom: Иван Петров <ivan@other.test>\r\n",
        "koi8-r",
        False,
        "Отчёт за квартал",
        "Иван Петров",
    ),
    (  # windows-1251 declared by the text part of a multipart only
        "Subject: Счёт №42\r\nFrom: Бухгалтерия <buh@other.test>\r\n",
        "windows-1251",
        True,
        "Счёт №42",
        "Бухгалтерия",
    ),
    (  # Shift_JIS: the second byte of 表 is ASCII "\\"
        "Subject: 表計算の資料\r\nFrom: 山田 <yamada@other.test>\r\n",
        "shift_jis",
        True,
        "表計算の資料",
        "山田",
    ),
    (  # GB2312 in a multipart
        "Subject: 会议通知\r\nFrom: 王伟 <wang@other.test>\r\n",
        "gb2312",
        True,
        "会议通知",
        "王伟",
    ),
    (  # ISO-2022-JP is 7-bit: its escapes are controls, and "ESC ( B" opens a comment
        "Subject: 会議の資料\r\nFrom: 山田 太郎 <yamada@other.test>\r\n",
        "iso-2022-jp",
        False,
        "会議の資料",
        "山田 太郎",
    ),
    (
        "Subject: 表計算\r\nFrom: 山田 <yamada@other.test>\r\n",
        "iso-2022-jp",
        True,
        "表計算",
        "山田",
    ),
]


def legacy(head: str, charset: str, multipart: bool) -> bytes:
    top = head.encode(charset) + b"To: alice@example.test\r\nMIME-Version: 1.0\r\n"
    body = "Привет" if charset in ("koi8-r", "windows-1251") else "表会"
    if not multipart:
        return (top + f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode()
                + body.encode(charset) + b"\r\n")  # fmt: skip
    return (
        top
        + b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
        + f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode()
        + body.encode(charset)
        + b"\r\n--m--\r\n"
    )


@CYRUS_MUNGES_8BIT
@pytest.mark.parametrize(
    "head, charset, multipart, subject, name",
    RAW_8BIT,
    ids=[
        "koi8-r",
        "cp1251-part",
        "shift_jis-part",
        "gb2312-part",
        "iso-2022-jp",
        "iso-2022-jp-part",
    ],
)
async def test_raw_8bit_headers_use_the_declared_charset(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str,
    head: str, charset: str, multipart: bool, subject: str, name: str,
) -> None:  # fmt: skip
    mailbox.append(stack, legacy(head, charset, multipart))
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    for view in (item, full):
        assert view["subject"] == subject
        assert view["from"][0]["name"] == name
    assert any(d.startswith("UndecodableBytesDefect (header Subject") for d in full["defects"])


@CYRUS_MUNGES_8BIT
async def test_the_first_charset_declared_counts_a_multipart_one_too(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    """The listing (IMAP: from BODYSTRUCTURE) reads the charsets the fetch reads, in the
    same order: the multipart's own parameter before its text part's."""
    raw = (
        "Subject: Счёт\r\nFrom: Бухгалтерия <buh@other.test>\r\n".encode("koi8-r")
        + b'To: a@example.test\r\nContent-Type: multipart/mixed; boundary="m"; charset=koi8-r'
        b"\r\n\r\n--m\r\nContent-Type: text/plain; charset=windows-1251\r\n\r\n"
        + "тест".encode("cp1251")
        + b"\r\n--m--\r\n"
    )
    mailbox.append(stack, raw)
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    for view in (item, full):
        assert (view["subject"], view["from"][0]["name"]) == ("Счёт", "Бухгалтерия")
    assert full["text"] == "тест"


@CYRUS_MUNGES_8BIT
async def test_raw_8bit_header_without_a_declared_charset_falls_back_to_cp1252(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    mailbox.append(stack, b"Subject: caf\xe9 \x80 5\r\nTo: a@example.test\r\n\r\nx\r\n")
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    assert item["subject"] == full["subject"] == "café € 5"
    assert "UndecodableBytesDefect (header Subject: 8-bit bytes read as cp1252)" in full["defects"]


# ---------------------------------------------------------------- 6. budgets


def many_parts(n: int) -> bytes:
    script = CASES / "many-parts.py"
    return subprocess.run([sys.executable, str(script), str(n)], check=True,
                          stdout=subprocess.PIPE).stdout  # fmt: skip


def nested(depth: int) -> bytes:
    head = (
        b"From: Deep Sender <deep@other.test>\r\nTo: alice@example.test\r\n"
        b"Subject: nested %d deep\r\nMessage-ID: <deep-%d@other.test>\r\n"
        b"Date: Mon, 30 Nov 2026 11:00:00 +0000\r\nMIME-Version: 1.0\r\n" % (depth, depth)
    )
    out = [head]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="=_%05d_="\r\n\r\n--=_%05d_=\r\n'
                   % (i, i))  # fmt: skip
    out.append(b"Content-Type: text/plain\r\n\r\ninnermost text\r\n")
    out += [b"--=_%05d_=--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


async def test_thirty_thousand_parts_stop_at_the_part_budget(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    raw = many_parts(30_000)
    mailbox.append(stack, raw)
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    assert (full["subject"], full["message_id"]) == (
        "many tiny MIME parts",
        "<many-parts@other.test>",
    )
    atts = full["attachments"]
    assert len(atts) == 9_999  # and the message itself: 10,000 parts, as Dovecot counts
    assert [a["id"] for a in atts[:3]] == ["1", "2", "3"] and atts[-1]["id"] == "9999"
    assert any(d.startswith("MimePartsDefect (part 9999") for d in full["defects"])
    assert await part(client, mailbox, item["id"], "5000") == b"x"
    rest = await part(client, mailbox, item["id"], "9999")
    body = raw.index(b"\r\n\r\n") + 4  # each part is 50 bytes, its "x" 47 bytes in
    assert rest == raw[body + 9_998 * 50 + 47 :]  # to the end, as the server's BODY[9999]
    assert len(rest) == atts[-1]["size"] == 1_000_060 and rest.endswith(b"--0--\r\n")
    r = await client.get(f"/v1/messages/{item['id']}/attachments/10000", headers=mailbox.auth)
    assert r.status_code == 404


@pytest.mark.parametrize("depth", [100, 1000])
async def test_deep_nesting_keeps_headers_and_is_one_leaf_past_the_depth_budget(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str, depth: int
) -> None:
    raw = nested(depth)
    mailbox.append(stack, raw)
    item = await only_item(client, mailbox, proto)
    full = await fetch(client, mailbox, item["id"])
    assert full["subject"] == item["subject"] == f"nested {depth} deep"
    assert full["message_id"] == f"<deep-{depth}@other.test>"
    assert full["from"] == [{"name": "Deep Sender", "address": "deep@other.test"}]
    assert full["date"] == "2026-11-30T11:00:00+00:00"
    assert full["text"] is None  # never the raw MIME source shown as text
    [leaf] = full["attachments"]
    assert leaf["id"] == ".".join(["1"] * 50) and leaf["content_type"] == "multipart/mixed"
    assert any(d.startswith("MimeDepthDefect") for d in full["defects"])
    got = await part(client, mailbox, item["id"], leaf["id"])
    assert len(got) == leaf["size"] and got.startswith(b"--=_00050_=\r\n")
    # its own close delimiter keeps its line break, as in the server's BODY[n] of it
    assert b"innermost text" in got and got.endswith(b"--=_00050_=--\r\n")
    if proto == "imap" and stack["MAILSTACK_SERVER"] == "dovecot":
        # Dovecot's MIME depth limit is 50 too, so its BODY[1.1...1] is this part; Cyrus
        # reads deeper, and its part of that number ends at the next boundary.
        assert got == server_part(mailbox, stack, leaf["id"])


async def test_a_tiny_depth_budget_is_a_setting(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    mailbox.append(stack, nested(3))
    async with make_client(mime_max_depth=1, mime_max_parts=2) as client:
        item = await only_item(client, mailbox, proto)
        full = await fetch(client, mailbox, item["id"])
        [leaf] = full["attachments"]
        assert leaf["id"] == "1" and full["subject"] == "nested 3 deep"
        got = await part(client, mailbox, item["id"], "1")
    assert len(got) == leaf["size"] and got.startswith(b"--=_00001_=")

"""The offset MIME scanner, the streaming part cutter, the base64 block decoder and the
BODYSTRUCTURE locator, without a server."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from service import mime
from service.mime.headers import header_block
from service.mime.params import media_field
from service.mime.structure import Limits, scan
from service.protocols.imap.structure import declared_charset, locate, reuses_boundary
from service.protocols.imap.wire import parse_fetch

CASES = Path(__file__).resolve().parent.parent / "data" / "cases"
RNG = random.Random(8)


def sections(raw: bytes) -> list[str]:
    parsed = mime.parse_message(raw, id="i", folder="INBOX", flags=[], size=len(raw))
    return [a.id for a in parsed.attachments]


MESSAGES = [
    (CASES / "forwarded-message-part.eml").read_bytes(),
    (CASES / "base64-two-blocks.eml").read_bytes(),
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
    b"\r\nhi\r\n--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b\r\nContent-Type: text/plain\r\n"
    b"--b\r\n\r\nthird\r\n",  # a header ended by a boundary, no close delimiter
]


@pytest.mark.parametrize("raw", MESSAGES, ids=["forwarded", "base64", "broken"])
def test_streamed_cut_equals_the_whole_cut_in_any_pieces(raw: bytes) -> None:
    scanner = scan(raw, Limits())
    parts = [p for p in scanner.headers_done if not p.in_message and mime.is_leaf(p)]
    for part in parts:
        section = part.section or "1"
        whole = raw[part.body_start : part.end]
        for size in (1, 2, 7, 64, len(raw)):
            cutter = mime.PartCutter(section, Limits())
            got = b"".join(cutter.feed(raw[i : i + size]) for i in range(0, len(raw), size))
            got += cutter.feed(b"", final=True)
            assert got == whole, (section, size)


def test_cutter_stops_after_the_part_and_knows_what_is_missing() -> None:
    raw = MESSAGES[0]
    cutter = mime.PartCutter("1", Limits())
    cutter.feed(raw[:400])
    assert cutter.finished and cutter.part is not None  # read no further than part 1
    for missing in ("4", "2.1", "0"):  # past the end, inside the attached message
        cutter = mime.PartCutter(missing, Limits())
        cutter.feed(raw, final=True)
        assert cutter.missing and cutter.part is None


@pytest.mark.parametrize("size", [1, 3, 5, 77])
def test_base64_blocks_decode_alike_in_any_pieces(size: int) -> None:
    chunks = [RNG.randbytes(n) for n in (10, 1, 2, 300)]
    encoded = b"\r\n".join(base64.encodebytes(c) for c in chunks) + b"!!\r\n"
    decoder = mime.PartDecoder("base64")
    got = b"".join(decoder.feed(encoded[i : i + size]) for i in range(0, len(encoded), size))
    got += decoder.flush()
    assert got == b"".join(chunks)
    assert decoder.defects == {"InvalidBase64PaddingDefect", "InvalidBase64CharactersDefect"}


# A FETCH reply as aioimaplib frames it (a literal in the envelope), Dovecot's words.
FORWARDED_FETCH = [
    b'1 FETCH (UID 7 BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 26 0'
    b' NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 1030 ("Mon, 30 Nov 2026 09:00:00'
    b' +0000" {22}',
    bytearray(b"Quartalsbericht f\xfcr Q3"),
    b' (("Original Sender" NIL "orig" "other.test")) NIL NIL ((NIL NIL "team" "other.test"))'
    b' NIL NIL NIL "<inner-1@other.test>") (("text" "plain" ("charset" "utf-8") NIL NIL'
    b' "quoted-printable" 43 0 NIL NIL NIL NIL)("text" "html" ("charset" "koi8-r") NIL NIL'
    b' "base64" 160 2 NIL NIL NIL NIL) "alternative" ("boundary" "inner-b") NIL NIL NIL) 33'
    b' NIL ("attachment" NIL) NIL NIL)("application" "pdf" ("name" "a.pdf" "charset"'
    b' "windows-1251") NIL NIL "base64" 100 NIL NIL NIL NIL) "mixed" ("boundary" "outer")'
    b" NIL NIL NIL))",
]


def test_bodystructure_locates_parts_of_the_message_itself() -> None:
    structure = parse_fetch(FORWARDED_FETCH)[7].structure
    first = locate(structure, "1")
    assert first is not None and (first.multipart, first.number) == (False, 2)
    attached = locate(structure, "2")
    assert attached is not None and not attached.multipart
    pdf = locate(structure, "3")
    # 1 the message, 2 part 1, 3 part 2, 4 its message, 5-6 the message's parts, 7 part 3
    assert pdf is not None and pdf.number == 7 and pdf.assumed == "windows-1251"
    assert pdf.boundaries == (b"outer", None)  # compared with the parser's, by the adapter
    assert locate(structure, "2.1") is None  # inside the attached message: not ours
    assert locate(structure, "4") is None and locate(structure, "1.1") is None
    assert declared_charset(structure) == "windows-1251"  # koi8-r is inside the message
    single = parse_fetch([b'1 FETCH (UID 8 BODYSTRUCTURE ("text" "plain" ("charset" "koi8-r")'
                          b' NIL NIL "8bit" 5 1 NIL NIL NIL NIL))'])[8].structure  # fmt: skip
    whole = locate(single, "1")
    assert whole is not None and whole.whole_body and whole.assumed == "koi8-r"
    assert locate(single, "2") is None and locate(None, "1") is None


def test_a_boundary_reused_inside_its_own_multipart_is_told() -> None:
    """CPython's msg_39 as Cyrus reads it: the inner multiparts reuse the boundary of the
    one around them, and Cyrus's part 2 is not the parser's (nor Dovecot's)."""
    cyrus = parse_fetch([
        b'1 FETCH (UID 1 BODYSTRUCTURE (((("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64"'
        b' 5 NIL NIL NIL NIL) "ALTERNATIVE" ("BOUNDARY" "----- =_aaaaaaaaaa1") NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "----- =_aaaaaaaaaa1") NIL NIL NIL)("TEXT" "PLAIN" ("CHARSET"'
        b' "us-ascii") NIL NIL "7BIT" 52 2 NIL NIL NIL NIL) "MIXED" ("BOUNDARY"'
        b' "----- =_aaaaaaaaaa0") NIL NIL NIL))'
    ])[1].structure  # fmt: skip
    assert reuses_boundary(cyrus)
    assert not reuses_boundary(parse_fetch(FORWARDED_FETCH)[7].structure)
    single = parse_fetch([b'1 FETCH (UID 8 BODYSTRUCTURE ("text" "plain" NIL'
                          b' NIL NIL "8bit" 5 1 NIL NIL NIL NIL))'])[8].structure  # fmt: skip
    assert not reuses_boundary(single) and not reuses_boundary(None)


def test_huge_header_fields_are_read_in_linear_time() -> None:
    """No time is asserted: before, these ran for hours (a folded field's lines were
    joined one by one; the Content-Type pattern could split white space many ways)."""
    folded = b"To: " + b",\r\n ".join(b"u%d@example.test" % i for i in range(500_000))
    block = header_block(folded + b"\r\nSubject: s\r\n  t\r\n\r\n")
    assert [name for name, _ in block.fields] == ["To", "Subject"]
    assert block.fields[0][1].count(b"\r\n ") == 499_999 and block.fields[1][1] == b" s\r\n  t"
    spaced = b"multipart/mixed; boundary=q; a=" + b" " * 50_000 + b"x y"
    defects: list[str] = []
    found = media_field(spaced, name="content-type", where="part 1", defects=defects)
    assert found is not None and (found.value, found.params["boundary"]) == ("multipart/mixed", "q")
    assert defects == ["MimeHeaderBudgetDefect (part 1: content-type read to 4096 characters)"]
    many = b"text/plain; name*0=a; " + b"; ".join(b"x*%d*=%%41" % i for i in range(20_000))
    assert media_field(many, name="content-type", defects=defects) is not None

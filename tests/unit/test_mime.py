"""Unit tests of service.mime: build, serialize, raw sends, parsing of sound and broken mail."""

from __future__ import annotations

import base64
import random
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from service import mime
from service.errors import ValidationFailed
from service.mime import OutgoingAttachment
from service.models.common import Address
from service.models.message import MessageSummary, ParsedMessage
from service.models.send import Draft

RNG = random.Random(20240601)
BINARY = RNG.randbytes(100 * 1024)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n\x00\xff\r\n%%EOF\n"
LATIN1 = "Grüße aus Köln, ça va?\n".encode("latin-1")


def draft(**fields: Any) -> Draft:
    fields.setdefault("from", "Alice <alice@example.com>")
    fields.setdefault("to", ["bob@example.org"])
    return Draft.model_validate(fields)


def roundtrip(
    d: Draft, atts: list[OutgoingAttachment] | None = None
) -> tuple[bytes, ParsedMessage]:
    msg = mime.build_message(d, atts or [], default_from="user")
    data = mime.serialize(msg)
    return data, mime.parse_message(data, id="m1", folder="INBOX", flags=[], size=len(data))


def head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def std(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)


def structure(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


# ---------------------------------------------------------------- build → serialize → parse


def test_text_only_roundtrip_and_wire_format() -> None:
    data, parsed = roundtrip(draft(subject="Hi", text="Hello Bob,\nsee you.\n"))
    assert structure(std(data)) == "text/plain"
    assert parsed.text == "Hello Bob,\nsee you.\n"
    assert parsed.html is None and parsed.attachments == []
    assert parsed.subject == "Hi" and parsed.defects == []
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert head_of(data).isascii()
    names = [h.name for h in parsed.headers]
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
        assert name in names
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", parsed.message_id or "")
    assert parsed.date is not None and parsed.date.endswith("+00:00")


def test_html_only() -> None:
    data, parsed = roundtrip(draft(html="<p>Grüße</p>"))
    assert structure(std(data)) == "text/html"
    assert parsed.text is None
    assert (parsed.html or "").rstrip("\n") == "<p>Grüße</p>"


def test_text_and_html_make_multipart_alternative() -> None:
    data, parsed = roundtrip(draft(text="plain ü", html="<b>rich ü</b>"))
    assert structure(std(data)) == ("multipart/alternative", ["text/plain", "text/html"])
    assert (parsed.text or "").rstrip("\n") == "plain ü"
    assert (parsed.html or "").rstrip("\n") == "<b>rich ü</b>"
    assert parsed.attachments == []


def test_non_ascii_bodies_use_7bit_safe_transfer_encodings() -> None:
    data, _ = roundtrip(draft(text="日本語 " * 50, html="<p>" + "é" * 2000 + "</p>"))
    assert data.isascii()
    for part in std(data).walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64", "7bit")
            assert part.get_content_charset() == "utf-8"


def test_attachments_are_byte_exact() -> None:
    atts = [
        OutgoingAttachment("noise.bin", "application/octet-stream", BINARY),
        OutgoingAttachment("résumé 日本.pdf", "application/pdf", PDF),
        OutgoingAttachment("latin.txt", "text/plain; charset=iso-8859-1", LATIN1),
    ]
    data, parsed = roundtrip(draft(text="see attached"), atts)
    tree = std(data)
    assert structure(tree) == (
        "multipart/mixed",
        ["text/plain", "application/octet-stream", "application/pdf", "text/plain"],
    )
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9" in data  # RFC 2231
    assert [a.id for a in parsed.attachments] == ["2", "3", "4"]
    assert [a.filename for a in parsed.attachments] == ["noise.bin", "résumé 日本.pdf", "latin.txt"]
    assert [a.size for a in parsed.attachments] == [len(BINARY), len(PDF), len(LATIN1)]
    assert {a.disposition for a in parsed.attachments} == {"attachment"}
    assert (parsed.text or "").rstrip("\n") == "see attached"
    for att_id, content in (("2", BINARY), ("3", PDF), ("4", LATIN1)):
        found = mime.find_attachment(data, att_id)
        assert found is not None and found[1] == content and found[0].size == len(content)
    latin_part = list(tree.iter_attachments())[-1]
    assert latin_part.get_content_charset() == "iso-8859-1"
    assert latin_part["Content-Transfer-Encoding"] == "base64"


def test_attachment_only_message_has_no_body_part() -> None:
    data, parsed = roundtrip(draft(), [OutgoingAttachment("a.pdf", "application/pdf", PDF)])
    assert structure(std(data)) == ("multipart/mixed", ["application/pdf"])
    assert parsed.text is None and [a.id for a in parsed.attachments] == ["1"]


def test_inline_image_goes_into_multipart_related() -> None:
    png = b"\x89PNG\r\n\x1a\n" + RNG.randbytes(500)
    atts = [
        OutgoingAttachment("logo.png", "image/png", png, content_id="logo@x", inline=True),
        OutgoingAttachment("doc.pdf", "application/pdf", PDF),
    ]
    d = draft(text="t", html='<img src="cid:logo@x">')
    data, parsed = roundtrip(d, atts)
    tree = std(data)
    assert structure(tree) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    related = next(p for p in tree.walk() if p.get_content_type() == "multipart/related")
    assert related.get_param("type") == "text/html"
    image = next(p for p in tree.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@x>"
    assert image.get_content_disposition() == "inline"
    assert 'src="cid:logo@x"' in (parsed.html or "")
    logo, doc = parsed.attachments
    assert (logo.id, logo.content_id, logo.disposition) == ("1.2.2", "logo@x", "inline")
    assert (doc.id, doc.disposition) == ("2", "attachment")
    found = mime.find_attachment(data, "1.2.2")
    assert found is not None and found[1] == png


def test_inline_without_html_stays_in_mixed() -> None:
    att = OutgoingAttachment("a.png", "image/png", b"png", content_id="<a@x>", inline=True)
    data, parsed = roundtrip(draft(text="t"), [att])
    assert structure(std(data)) == ("multipart/mixed", ["text/plain", "image/png"])
    assert parsed.attachments[0].content_id == "a@x"
    assert parsed.attachments[0].disposition == "inline"


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße 日本語 😀",
        "Price * 2",
        "(unbalanced",
        '"quoted"',
        "a;b,c:<d>",
        "  leading and trailing spaces kept inside  x",
        "Långt ämne " * 30,
        "x" * 300,
    ],
)
def test_subjects_roundtrip(subject: str) -> None:
    data, parsed = roundtrip(draft(subject=subject, text="x"))
    assert parsed.subject == subject.strip()
    assert head_of(data).isascii()
    assert all(len(line) <= 998 for line in head_of(data).split(b"\r\n"))


def test_non_ascii_and_special_display_names_roundtrip() -> None:
    d = draft(
        **{"from": {"name": "Jörg Müller", "address": "jm@example.com"}},
        to=[{"name": "Doe, John (Sales)", "address": "jd@example.org"}, "日本 <jp@example.org>"],
        cc=[{"name": 'Say "hi"', "address": "q@example.org"}],
        reply_to=["replies@example.com"],
        text="x",
    )
    _, parsed = roundtrip(d)
    assert [(a.name, a.address) for a in parsed.from_] == [("Jörg Müller", "jm@example.com")]
    assert [(a.name, a.address) for a in parsed.to] == [
        ("Doe, John (Sales)", "jd@example.org"),
        ("日本", "jp@example.org"),
    ]
    assert [(a.name, a.address) for a in parsed.cc] == [('Say "hi"', "q@example.org")]
    assert [a.address for a in parsed.reply_to] == ["replies@example.com"]


def test_long_non_ascii_display_name_roundtrip() -> None:
    # Folded into several encoded words; the white space between them must not count.
    name = " ".join(["Jörg Müller-Lüdenscheidt von und zu Großbritannien Ångström"] * 3)
    d = draft(**{"from": {"name": name, "address": "jm@example.com"}}, text="x")
    data, parsed = roundtrip(d)
    assert head_of(data).count(b"=?utf-8?") > 2
    assert [(a.name, a.address) for a in parsed.from_] == [(name, "jm@example.com")]


def test_long_unbreakable_header_value_is_encoded_to_fit() -> None:
    data, parsed = roundtrip(draft(text="x", headers={"X-Long": "a" * 1200}))
    assert all(len(line) <= 78 for line in head_of(data).split(b"\r\n"))
    assert {"name": "X-Long", "value": "a" * 1200} in [h.model_dump() for h in parsed.headers]


def test_idn_domain_is_sent_as_idna() -> None:
    d = draft(to=["user@bücher.example"], text="x")
    msg = mime.build_message(d, [], default_from="user")
    assert "xn--bcher-kva.example" in str(msg["To"])
    assert mime.envelope(d, msg)[1] == ["user@xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("domain", "ascii_form"),
    [
        ("straße.test", "xn--strae-oqa.test"),  # IDNA 2003 would send to strasse.test
        ("ςοφία.test", "xn--kxae4blv.test"),  # final sigma stays (IDNA 2003: xn--kxae4bpq)
        ("Faß.Example", "xn--fa-hia.example"),  # UTS #46 maps case, keeps ß
        ("ｅｘａｍｐｌｅ.test", "example.test"),  # full-width letters map to ASCII
        ("日本.test", "xn--wgv71a.test"),
    ],
)
def test_idn_domains_use_idna2008_nontransitional(domain: str, ascii_form: str) -> None:
    d = draft(to=[f"Info <info@{domain}>"], cc=[f"c@{domain}"], text="x")
    msg = mime.build_message(d, [], default_from="user")
    assert mime.envelope(d, msg)[1] == [f"info@{ascii_form}", f"c@{ascii_form}"]
    head = head_of(mime.serialize(msg))
    assert f"<info@{ascii_form}>".encode() in head and f"c@{ascii_form}".encode() in head


@pytest.mark.parametrize(
    "domain", ["☃.test", "a\u200db.test", "-bad.test", "xn--a.ü.test", "a..ü.test"]
)
def test_domains_idna2008_refuses_are_422_never_another_domain(domain: str) -> None:
    with pytest.raises(PydanticValidationError, match="domain"):  # the draft refuses it first
        draft(to=[f"info@{domain}"], text="x")
    # and so does composing, should an unchecked draft get there
    d = Draft.model_construct(
        from_=Address.model_construct(name=None, address="alice@example.com"),
        to=[Address.model_construct(name=None, address=f"info@{domain}")],
        text="x",
    )
    with pytest.raises(ValidationFailed, match="domain"):
        mime.build_message(d, [], default_from="user")
    with pytest.raises(ValidationFailed):  # the domain, or no usable recipient left
        mime.prepare_raw(f"From: a@example.com\r\nTo: info@{domain}\r\n\r\nx".encode(),
                         mail_from=None, rcpt_to=[])  # fmt: skip


def test_bcc_is_in_envelope_not_in_headers() -> None:
    d = draft(cc=["carol@example.org"], bcc=["secret@hidden.example", "Other <o@hidden.example>"])
    msg = mime.build_message(d, [], default_from="user")
    data = mime.serialize(msg)
    assert b"hidden.example" not in data
    assert b"bcc" not in head_of(data).lower()
    mail_from, rcpts = mime.envelope(d, msg)
    assert mail_from == "alice@example.com"
    assert rcpts == [
        "bob@example.org",
        "carol@example.org",
        "secret@hidden.example",
        "o@hidden.example",
    ]
    copy = mime.sent_copy(data, d)
    parsed = mime.parse_message(copy, id="s", folder="Sent", flags=[], size=None)
    assert [a.address for a in parsed.bcc] == ["secret@hidden.example", "o@hidden.example"]
    assert copy.replace(head_of(copy), b"") == data.replace(head_of(data), b"")


def test_envelope_dedupes_case_insensitively_keeping_order() -> None:
    d = draft(
        to=["A@x.example", "b@x.example"], cc=["a@X.EXAMPLE"], bcc=["B@x.example", "c@x.example"]
    )
    msg = mime.build_message(d, [], default_from="user")
    assert mime.envelope(d, msg)[1] == ["A@x.example", "b@x.example", "c@x.example"]


def test_threading_headers() -> None:
    d = draft(
        text="re",
        in_reply_to="orig@example.net",
        references=["<root@example.net>", "orig@example.net"],
    )
    data, parsed = roundtrip(d)
    assert parsed.in_reply_to == "<orig@example.net>"
    assert parsed.references == ["<root@example.net>", "<orig@example.net>"]
    assert b"In-Reply-To: <orig@example.net>\r\n" in data


def test_message_id_domain_override() -> None:
    msg = mime.build_message(draft(text="x"), [], default_from="user", domain="mail.example.net")
    assert str(msg["Message-ID"]).endswith("@mail.example.net>")


def test_extra_headers() -> None:
    d = draft(text="x", headers={"X-Tracking": "abc 123", "X-Note": "Grüße", "Importance": "high"})
    _, parsed = roundtrip(d)
    values = {h.name: h.value for h in parsed.headers}
    assert values["X-Tracking"] == "abc 123"
    assert values["X-Note"] == "Grüße"
    assert values["Importance"] == "high"


def test_default_from() -> None:
    d = draft(**{"from": None}, text="x")
    msg = mime.build_message(d, [], default_from="me@example.com")
    assert mime.envelope(d, msg)[0] == "me@example.com"
    with pytest.raises(ValidationFailed, match='"from"'):
        mime.build_message(d, [], default_from="bare-user-name")


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "hi\r\nBcc: victim@example.com"},
        {"subject": "hi\nthere"},
        {"subject": "line\u2028separator"},
        {"subject": "vertical\x0btab"},
        {"headers": {"X-A": "v\r\nX-Injected: 1"}},
        {"in_reply_to": "<a@b>\r\nX: y"},
        {"references": ["<a@b> <c@d>"]},
    ],
)
def test_line_breaks_never_reach_headers(fields: dict[str, Any]) -> None:
    bad = draft(text="x").model_copy(update=fields)  # skips the model's validators
    with pytest.raises(ValidationFailed):
        mime.build_message(bad, [], default_from="user")


def test_line_breaks_in_display_name_or_address_are_refused() -> None:
    from service.models.common import Address

    for addr in (
        Address.model_construct(name="Eve\r\nBcc: x@y.example", address="eve@example.com"),
        Address.model_construct(name=None, address="eve@example.com\r\nRCPT TO:<x@y>"),
        Address.model_construct(name=None, address="ünicode@example.com"),
    ):
        bad = draft(text="x").model_copy(update={"to": [addr]})
        with pytest.raises(ValidationFailed):
            mime.build_message(bad, [], default_from="user")


def test_attachment_filename_with_line_break_is_refused() -> None:
    att = OutgoingAttachment("a\nb.txt", "text/plain", b"x")
    with pytest.raises(ValidationFailed):
        mime.build_message(draft(text="x"), [att], default_from="user")


def test_attachments_from_json() -> None:
    payload = base64.b64encode(BINARY[:1000]).decode()
    wrapped = "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    d = draft(
        attachments=[
            {"filename": "a.bin", "content_base64": wrapped},
            {
                "content_type": "image/png",
                "content_base64": "iVBO",
                "content_id": "c@x",
                "inline": True,
            },
        ]
    )
    first, second = mime.attachments_from_json(d)
    assert first == OutgoingAttachment("a.bin", "application/octet-stream", BINARY[:1000])
    assert second.content_id == "c@x" and second.inline and second.data == b"\x89PN"
    bad = draft(attachments=[{"filename": "x", "content_base64": "not*base64!"}])
    with pytest.raises(ValidationFailed, match=r"attachments\[0\]"):
        mime.attachments_from_json(bad)


def test_message_rfc822_attachment_is_not_base64() -> None:
    inner = b"From: a@example.com\r\nSubject: inner\r\n\r\nbody\r\n"
    att = OutgoingAttachment("fwd.eml", "message/rfc822", inner)
    data, parsed = roundtrip(draft(text="fwd"), [att])
    part = list(std(data).iter_attachments())[0]
    assert part["Content-Transfer-Encoding"] == "7bit"
    assert parsed.attachments[0].content_type == "message/rfc822"
    found = mime.find_attachment(data, "2")
    assert found is not None and b"Subject: inner" in found[1] and found[1].endswith(b"body\r\n")


# ---------------------------------------------------------------- raw sends

RAW = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org,\r\n"
    b" Carol <carol@example.org>\r\n"
    b"BCC: hidden1@example.net,\r\n"
    b'\t"Hidden Two" <hidden2@example.net>\r\n'
    b"Subject: raw =?utf-8?q?m=C3=BCll?=\r\n"
    b"bcc: bob@EXAMPLE.org\r\n"
    b"Message-ID: <raw.1@example.com>\r\n"
    b"Resent-Bcc: nobody-here\r\n"
    b"X-Keep: \xff raw 8-bit kept\r\n"
    b"\r\n"
    b"Bcc: this line is body text and stays\r\n"
    b"\xff\xfe binary-ish body\r\n"
)


def test_prepare_raw_strips_folded_bcc_and_keeps_every_other_byte() -> None:
    data, mail_from, rcpts, message_id = mime.prepare_raw(RAW, mail_from=None, rcpt_to=[])
    expected = (
        b"From: Alice <alice@example.com>\r\n"
        b"To: bob@example.org,\r\n"
        b" Carol <carol@example.org>\r\n"
        b"Subject: raw =?utf-8?q?m=C3=BCll?=\r\n"
        b"Message-ID: <raw.1@example.com>\r\n"
        b"X-Keep: \xff raw 8-bit kept\r\n"
        b"\r\n"
        b"Bcc: this line is body text and stays\r\n"
        b"\xff\xfe binary-ish body\r\n"
    )
    assert data == expected
    assert mail_from == "alice@example.com"
    assert rcpts == [
        "bob@example.org",
        "carol@example.org",
        "hidden1@example.net",
        "hidden2@example.net",
    ]
    assert message_id == "<raw.1@example.com>"


def test_prepare_raw_normalises_bare_lf_and_cr() -> None:
    raw = b"From: a@example.com\nTo: b@example.org\nBcc: c@example.org\n\nline1\nline2\rline3\r\n"
    data, _, rcpts, message_id = mime.prepare_raw(raw, mail_from=None, rcpt_to=[])
    assert data == b"From: a@example.com\r\nTo: b@example.org\r\n\r\nline1\r\nline2\r\nline3\r\n"
    assert rcpts == ["b@example.org", "c@example.org"] and message_id is None


def test_prepare_raw_explicit_envelope_and_sender_header() -> None:
    raw = b"From: a@example.com\r\nSender: s@example.com\r\nTo: b@example.org\r\n\r\nx"
    assert mime.prepare_raw(raw, mail_from=None, rcpt_to=[])[1] == "s@example.com"
    _, mail_from, rcpts, _ = mime.prepare_raw(
        raw, mail_from="bounce@example.com", rcpt_to=["x@example.net", "X@example.net"]
    )
    assert (mail_from, rcpts) == ("bounce@example.com", ["x@example.net"])


def test_prepare_raw_resent_block_decides_the_envelope() -> None:
    raw = (
        b"Resent-From: r@example.com\r\nResent-To: new@example.org\r\n"
        b"Resent-Bcc: newhidden@example.org\r\n"
        b"From: a@example.com\r\nTo: old@example.org\r\n\r\nx"
    )
    data, mail_from, rcpts, _ = mime.prepare_raw(raw, mail_from=None, rcpt_to=[])
    assert (mail_from, rcpts) == ("r@example.com", ["new@example.org", "newhidden@example.org"])
    assert b"newhidden" not in data


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.com\r\nTo: b@example.org\r\n",  # no separator
        b"\r\nbody only",
        b"From: a@example.com\r\nthis is not a header\r\nTo: b@example.org\r\n\r\nx",
        b" continuation first: x\r\nTo: b@example.org\r\n\r\nx",
        b"From a@example.com Mon Jan  1 00:00:00 2024\r\nTo: b@example.org\r\n\r\nx",
        b"From: a@example.com\r\nSubject: nobody\r\n\r\nx",  # no recipients
        b"To: b@example.org\r\n\r\nx",  # no sender
        b"From: a@example.com\r\nTo: j\xc3\xbcrgen@example.org\r\n\r\nx",  # needs SMTPUTF8
    ],
)
def test_prepare_raw_refuses(raw: bytes) -> None:
    with pytest.raises(ValidationFailed):
        mime.prepare_raw(raw, mail_from=None, rcpt_to=[])


def test_prepare_raw_refuses_injected_envelope_address() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx"
    with pytest.raises(ValidationFailed):
        mime.prepare_raw(raw, mail_from=None, rcpt_to=["b@example.org>\r\nDATA"])


def test_serialized_build_is_accepted_by_prepare_raw_unchanged() -> None:
    data = mime.serialize(
        mime.build_message(draft(text="x", cc=["c@example.org"]), [], default_from="u")
    )
    assert mime.prepare_raw(data, mail_from=None, rcpt_to=[])[0] == data


# ---------------------------------------------------------------- parsing structure

NESTED = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\n"
    b"Sender: Desk <desk@example.com>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b'Cc: a@example.org, "B, Bee" <b@example.org>\r\n'
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= nested\r\n"
    b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
    b"Message-ID: <nested@example.com> (comment)\r\n"
    b"References: <a@x>\r\n <b@x>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=FC=DFe\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Gr\xc3\xbc\xc3\x9fe</p>\r\n"
    b"--alt--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(PDF).replace(b"\n", b"\r\n") + b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: attachment; filename*=iso-8859-1''f%FCr.eml\r\n"
    b"\r\n"
    b"From: inner@example.com\r\n"
    b"Subject: inner\r\n"
    b'Content-Type: multipart/mixed; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n\r\ninner body\r\n"
    b"--inner\r\n"
    b"Content-Type: image/gif\r\nContent-Disposition: attachment; filename=inner.gif\r\n\r\nGIF\r\n"
    b"--inner--\r\n"
    b"--outer--\r\n"
)


def parse(raw: bytes) -> ParsedMessage:
    return mime.parse_message(raw, id="i", folder="INBOX", flags=["\\Seen"], size=len(raw))


def test_nested_structure_uses_imap_section_numbers() -> None:
    parsed = parse(NESTED)
    assert parsed.text == "Grüße"
    assert parsed.html == "<p>Grüße</p>"
    assert [(a.id, a.content_type) for a in parsed.attachments] == [
        ("2", "application/pdf"),
        ("3", "message/rfc822"),
    ]
    pdf, eml = parsed.attachments
    assert pdf.filename == "résumé.pdf" and pdf.size == len(PDF) and pdf.disposition is None
    assert eml.filename == "für.eml" and eml.disposition == "attachment"
    found = mime.find_attachment(NESTED, "2")
    assert found is not None and found[1] == PDF
    inner = mime.find_attachment(NESTED, "3")
    assert inner is not None and inner[0].size == len(inner[1])
    assert inner[1].startswith(b"From: inner@example.com\r\n") and b"GIF" in inner[1]
    body = mime.find_attachment(NESTED, "1.1")  # the text body is a part too
    assert body is not None and body[1] == "Grüße".encode("latin-1")
    assert mime.find_attachment(NESTED, "1") is None  # a multipart with parts
    assert mime.find_attachment(NESTED, "3.2") is None  # inside the attached message
    assert mime.find_attachment(NESTED, "4") is None


def test_parsed_headers_and_addresses() -> None:
    parsed = parse(NESTED)
    assert parsed.subject == "Grüße nested"
    assert [(a.name, a.address) for a in parsed.from_] == [("Jürgen", "j@example.com")]
    assert parsed.sender is not None and parsed.sender.address == "desk@example.com"
    assert parsed.to == []
    assert [(a.name, a.address) for a in parsed.cc] == [
        (None, "a@example.org"),
        ("B, Bee", "b@example.org"),
    ]
    assert parsed.date == "2003-07-01T10:52:37+02:00"
    assert parsed.message_id == "<nested@example.com>"
    assert parsed.references == ["<a@x>", "<b@x>"]
    assert {"name": "References", "value": "<a@x> <b@x>"} in [
        h.model_dump() for h in parsed.headers
    ]
    assert parsed.flags == ["\\Seen"] and parsed.size == len(NESTED)


def test_related_inside_alternative_inside_mixed() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b'--m\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
        b"--a\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b'--a\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
        b"--r\r\nContent-Type: text/html\r\n\r\n<img src=cid:pic>\r\n"
        b"--r\r\nContent-Type: image/png\r\nContent-ID: <pic>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n"
        b"--r--\r\n--a--\r\n"
        b"--m\r\nContent-Type: application/zip\r\n"
        b"Content-Disposition: attachment; filename=a.zip\r\n\r\nPK\r\n"
        b"--m--\r\n"
    )
    parsed = parse(raw)
    assert parsed.text == "plain" and parsed.html == "<img src=cid:pic>"
    assert [(a.id, a.content_id, a.filename) for a in parsed.attachments] == [
        ("1.2.2", "pic", None),
        ("2", None, "a.zip"),
    ]
    found = mime.find_attachment(raw, "1.2.2")
    assert found is not None and found[1] == b"\x89PNG"


def test_single_part_message_body_is_section_1() -> None:
    raw = (
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(PDF)
        + b"\r\n"
    )
    parsed = parse(raw)
    assert parsed.text is None and [a.id for a in parsed.attachments] == ["1"]
    found = mime.find_attachment(raw, "1")
    assert found is not None and found[1] == PDF
    plain = b"Subject: x\r\n\r\nhello\r\n"
    assert parse(plain).text == "hello\n"
    found = mime.find_attachment(plain, "1")  # the body of a single-part message
    assert found is not None and found[1] == b"hello\r\n"


def test_second_text_part_and_text_attachment_are_listed() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnotes\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfooter\r\n"
        b"--b--\r\n"
    )
    parsed = parse(raw)
    assert parsed.text == "first"
    assert [(a.id, a.disposition) for a in parsed.attachments] == [("2", "attachment"), ("3", None)]


# ---------------------------------------------------------------- defective mail


def defects_of(raw: bytes) -> tuple[ParsedMessage, str]:
    parsed = parse(raw)
    parsed.model_dump_json()  # must be serialisable: no lone surrogates anywhere
    return parsed, " ".join(parsed.defects)


def test_missing_closing_boundary() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    )
    parsed, defects = defects_of(raw)
    # The part runs to the end of the message, as an IMAP server's BODY[1] does.
    assert "CloseBoundaryNotFoundDefect" in defects and parsed.text == "hi\n"


def test_missing_boundary_parameter_shows_the_text() -> None:
    raw = b"Content-Type: multipart/mixed\r\n\r\n--x\r\nsome text\r\n"
    parsed, defects = defects_of(raw)
    assert "NoBoundaryInMultipartDefect" in defects
    assert parsed.text is not None and "some text" in parsed.text


def test_invalid_base64_body() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"QUJD!!!RA=\r\n--b--\r\n"
    )
    parsed, defects = defects_of(raw)
    assert "InvalidBase64" in defects
    assert parsed.attachments[0].id == "1"


def test_unknown_charset() -> None:
    raw = (
        b"Subject: =?x-unknown?q?caf=E9?= ok\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\ncaf\xe9 \xc3\xa9\r\n"
    )
    parsed, defects = defects_of(raw)
    assert "CharsetError" in defects
    assert parsed.text is not None and parsed.text.startswith("caf") and "é" in parsed.text
    assert parsed.subject is not None and parsed.subject.endswith("ok")


def test_raw_8bit_latin1_header() -> None:
    raw = (
        b"From: J\xf6rg <j@example.com>\r\nSubject: Gr\xfc\xdfe \xe0 vous\r\n"
        b"To: b@example.org\r\n\r\nbody\r\n"
    )
    parsed, defects = defects_of(raw)
    assert parsed.subject == "Grüße à vous"
    assert [(a.name, a.address) for a in parsed.from_] == [("Jörg", "j@example.com")]
    assert "UndecodableBytesDefect" in defects


def test_raw_utf8_header_is_decoded_as_utf8() -> None:
    parsed, _ = defects_of("Subject: Grüße 日本\r\n\r\nx".encode())
    assert parsed.subject == "Grüße 日本"


def test_nul_bytes_header_garbage_and_bad_date() -> None:
    raw = (
        b"Subject: a\x00b\r\nDate: the day after tomorrow\r\nFrom: <<<>>>\r\n"
        b"this is not a header\r\nTo: x@y\r\n\r\nbo\x00dy\r\n"
    )
    parsed, defects = defects_of(raw)
    assert parsed.subject == "a\x00b" and parsed.date is None
    # As IMAP servers do, the header runs on to its empty line: To is still a header.
    assert "InvalidHeaderDefect (header line 4: not a field)" in defects
    assert [a.address for a in parsed.to] == ["x@y"] and parsed.text == "bo\x00dy\n"


def test_truncated_messages_never_raise() -> None:
    whole = mime.serialize(
        mime.build_message(
            draft(text="t", html="<p>h</p>"),
            [OutgoingAttachment("n.bin", "application/octet-stream", BINARY[:5000])],
            default_from="u",
        )
    )
    for cut in range(0, len(whole), 97):
        parsed, _ = defects_of(whole[:cut])
        assert isinstance(parsed, ParsedMessage)
    parsed, defects = defects_of(whole[: len(whole) // 2])
    assert "CloseBoundaryNotFoundDefect" in defects


def test_fuzzed_messages_never_raise() -> None:
    rng = random.Random(7)
    seeds = [NESTED, RAW, mime.serialize(mime.build_message(draft(text="x"), [], default_from="u"))]
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 20)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[pos] = rng.randrange(256)
            elif choice < 0.7:
                del data[pos : pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = rng.choice(
                    [b"\r\n", b"=?", b"?=", b"--", b"\x00", b":", b"\xff", b";"]
                )
        parsed, _ = defects_of(bytes(data))
        assert parsed.id == "i"
        mime.summary_fields(bytes(data))
        for att in parsed.attachments:
            assert mime.find_attachment(bytes(data), att.id) is not None


# ---------------------------------------------------------------- listing


def test_summary_fields_from_header_block() -> None:
    head = NESTED.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    fields = mime.summary_fields(head)
    assert fields["message_id"] == "<nested@example.com>"
    assert fields["subject"] == "Grüße nested"
    assert fields["date"] == "2003-07-01T10:52:37+02:00"
    assert fields["has_attachments"] is True and fields["content_type"] == "multipart/mixed"
    summary = MessageSummary.model_validate({"id": "1", "folder": "INBOX", **fields})
    assert [a["address"] for a in summary.from_] == ["j@example.com"]
    assert [a["address"] for a in summary.cc] == ["a@example.org", "b@example.org"]
    assert summary.to == []


def test_summary_fields_simple_and_garbage() -> None:
    plain = mime.summary_fields(b"Subject: hi\r\nContent-Type: text/plain\r\n")
    assert plain["has_attachments"] is False and plain["subject"] == "hi"
    assert plain["message_id"] is None and plain["date"] is None and plain["from"] == []
    alt = mime.summary_fields(b"Content-Type: multipart/alternative; boundary=x\r\n\r\n")
    assert alt["has_attachments"] is False
    for junk in (b"", b"\x00\xff\r\n\r\n", b":::\r\n \r\n", b"Subject: =?utf-8?b?!!!?=\r\n"):
        assert set(mime.summary_fields(junk)) >= {"subject", "from", "has_attachments"}


def test_one_broken_address_does_not_cost_the_message() -> None:
    raw = (b'From: a@x.test\r\nTo: "unterminated <b@x.test>\r\nCc: c@x.test\r\n'
           b"Subject: still here\r\n\r\nthe body\r\n")  # fmt: skip
    parsed = mime.parse_message(raw, id="x", folder="INBOX", flags=[], size=len(raw))
    assert parsed.subject == "still here" and parsed.text == "the body\n"
    assert [a.address for a in parsed.cc] == ["c@x.test"]
    assert any("InvalidAddress" in d for d in parsed.defects)

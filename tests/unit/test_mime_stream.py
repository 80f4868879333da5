"""The incremental decoders give the same bytes as decoding whole, for any split."""

from __future__ import annotations

import base64
import binascii
import email
import os
import quopri
import random

import pytest

from service.mime import PartDecoder


def run(encoding: str, encoded: bytes, rng: random.Random) -> bytes:
    dec = PartDecoder(encoding)
    out = bytearray()
    pos = 0
    while pos < len(encoded):
        step = rng.randint(1, 97)
        out += dec.feed(encoded[pos : pos + step])
        pos += step
    return bytes(out + dec.flush())


@pytest.mark.parametrize("seed", range(20))
def test_base64_any_split(seed: int) -> None:
    rng = random.Random(seed)
    data = os.urandom(rng.randint(0, 5000))
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert run("base64", encoded, rng) == data
    assert run("BASE64", base64.b64encode(data), rng) == data


@pytest.mark.parametrize("seed", range(20))
def test_quoted_printable_any_split(seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.choice(b"abc =\t\xe4\xf6\r\n.") for _ in range(rng.randint(0, 3000)))
    encoded = quopri.encodestring(data)
    assert run("quoted-printable", encoded, rng) == quopri.decodestring(encoded)


def test_identity_and_sloppy_base64() -> None:
    rng = random.Random(1)
    assert run("8bit", b"caf\xc3\xa9\r\n", rng) == b"caf\xc3\xa9\r\n"
    assert run(None, b"plain", rng) == b"plain"  # type: ignore[arg-type]
    assert run("base64", b"aGVsbG8gd29y\r\nbGQ", rng) == b"hello world"  # unpadded
    assert run("base64", b"aGVs*bG8=\r\n", rng) == b"hello"  # junk ignored


@pytest.mark.parametrize(
    "encoded, data, defects",
    [
        (b"QUJDRA\r\n", b"ABCD", {"InvalidBase64PaddingDefect"}),  # the last group unpadded
        (b"QUJDRA=\r\n", b"ABCD", {"InvalidBase64PaddingDefect"}),  # one "=" short
        (b"QQ===\r\n", b"A", {"InvalidBase64PaddingDefect"}),  # one "=" too many
        (b"QUJDRA==\r\nRUY=\r\n", b"ABCDEF", {"InvalidBase64PaddingDefect"}),  # two blocks
        (b"QUJDRA==\r\n", b"ABCD", set()),
        (b"QUJD\r\nRUZH\r\n", b"ABCEFG", set()),
    ],
)
def test_base64_padding_irregularities_are_defects_in_any_split(
    encoded: bytes, data: bytes, defects: set[str]
) -> None:
    for seed in range(5):
        rng = random.Random(seed)
        dec = PartDecoder("base64")
        out = bytearray()
        pos = 0
        while pos < len(encoded):
            step = rng.randint(1, 3)
            out += dec.feed(encoded[pos : pos + step])
            pos += step
        assert (bytes(out + dec.flush()), dec.defects) == (data, defects)


@pytest.mark.parametrize("seed", range(10))
def test_uuencode_any_split_as_the_standard_library(seed: int) -> None:
    rng = random.Random(seed)
    data = os.urandom(rng.randint(0, 3000))
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    encoded = (
        b"preamble\r\nbegin 644 d.bin\r\n" + lines.replace(b"\n", b"\r\n") + b"`\r\nend\r\nx\r\n"
    )
    whole = email.message_from_bytes(b"Content-Transfer-Encoding: x-uuencode\r\n\r\n" + encoded)
    assert run("x-uuencode", encoded, rng) == whole.get_payload(decode=True) == data
    assert run("uuencode", b"no begin line\r\n", rng) == b"no begin line\r\n"  # kept whole

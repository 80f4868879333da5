#!/usr/bin/env python3
"""Write a 1.5 MB message of 30,000 one-byte MIME parts to stdout (a parser-budget case)."""

import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
parts = b"".join(b"--0\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n" for _ in range(n))
sys.stdout.buffer.write(
    b"From: sender@other.test\r\nTo: alice@example.test\r\nSubject: many tiny MIME parts\r\n"
    b"Message-ID: <many-parts@other.test>\r\nDate: Mon, 30 Nov 2026 11:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=0\r\n\r\n" + parts + b"--0--\r\n"
)

"""mailgate: a stateless REST gateway from HTTP to SMTP, IMAP and POP3."""

__version__ = "0.1.0"

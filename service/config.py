"""Settings (MAILGATE_* environment variables) and the mail providers they name."""

from __future__ import annotations

import difflib
import ipaddress
import json
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.mime.structure import Limits
from service.tls import client_context

Security = Literal["implicit", "starttls", "plain"]
_SCHEMES: dict[str, tuple[str, Security, int]] = {
    "smtps": ("smtp", "implicit", 465),
    "smtp": ("smtp", "starttls", 587),
    "smtp+plain": ("smtp", "plain", 25),
    "imaps": ("imap", "implicit", 993),
    "imap": ("imap", "starttls", 143),
    "imap+plain": ("imap", "plain", 143),
    "pop3s": ("pop3", "implicit", 995),
    "pop3": ("pop3", "starttls", 110),
    "pop3+plain": ("pop3", "plain", 110),
}


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerUrl:
    """One mail server: protocol, TLS mode, host and port."""

    protocol: str
    security: Security
    host: str
    port: int

    @classmethod
    def parse(cls, url: str, protocol: str, *, allow_plaintext: bool = False) -> ServerUrl:
        """Parse and check a provider URL; ValueError says what is wrong."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES or _SCHEMES[scheme][0] != protocol:
            allowed = ", ".join(f"{s}://" for s, v in _SCHEMES.items() if v[0] == protocol)
            raise ValueError(f"{url!r} is not a {protocol} URL (use {allowed})")
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{url!r} must be scheme://host[:port] only (no credentials, path)")
        try:
            port = parts.port or _SCHEMES[scheme][2]
        except ValueError as exc:
            raise ValueError(f"{url!r} has an invalid port") from exc
        security = _SCHEMES[scheme][1]
        if security == "plain" and not allow_plaintext and not is_loopback(parts.hostname):
            raise ValueError(
                f"{url!r}: plaintext is allowed only to loopback unless the provider "
                "sets allow_plaintext"
            )
        return cls(protocol, security, parts.hostname, port)


@dataclass(frozen=True)
class Provider:
    """A named set of mail servers chosen per request with X-Mail-Provider."""

    name: str
    smtp: ServerUrl | None
    imap: ServerUrl | None
    pop3: ServerUrl | None
    ca_file: Path | None = None

    @classmethod
    def from_urls(
        cls,
        name: str,
        urls: dict[str, str | None],
        *,
        allow_plaintext: bool = False,
        ca_file: Path | None = None,
    ) -> Provider:
        servers: dict[str, ServerUrl | None] = {}
        for proto in ("smtp", "imap", "pop3"):
            url = urls.get(proto)
            servers[proto] = (
                ServerUrl.parse(url, proto, allow_plaintext=allow_plaintext) if url else None
            )
        return cls(name, servers["smtp"], servers["imap"], servers["pop3"], ca_file)

    def server(self, protocol: str) -> ServerUrl | None:
        return {"smtp": self.smtp, "imap": self.imap, "pop3": self.pop3}[protocol]


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    """Gateway configuration; every field is MAILGATE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAILGATE_", extra="ignore")

    allow_plaintext: bool = Field(  # before the URLs: their validators read it
        default=False, description="allow `+plain` URLs to non-loopback hosts"
    )
    smtp_url: str | None = Field(
        default="smtp://localhost:31587",
        description="`smtps://` implicit TLS, `smtp://` STARTTLS required, `smtp+plain://` "
        "loopback only",
    )
    imap_url: str | None = Field(
        default="imaps://localhost:31993", description="likewise `imaps`/`imap`/`imap+plain`"
    )
    pop3_url: str | None = Field(
        default="pop3s://localhost:31995", description="likewise `pop3s`/`pop3`/`pop3+plain`"
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle for the mail servers' certificates (default: the system store)",
    )
    providers_file: Path | None = Field(
        default=None,
        description="JSON or TOML `{name: {smtp, imap, pop3, allow_plaintext, ca_file}}`, "
        "chosen by `X-Mail-Provider`",
    )
    default_protocol: Literal["imap", "pop3"] = Field(
        default="imap", description="reading protocol when `protocol=` is absent"
    )
    default_mode: Literal["keep", "remove"] = Field(
        default="keep", description="fetch mode when `mode=` is absent"
    )
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated hex SHA-256 of accepted `X-API-Key` values",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS"
    )
    max_message_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1024,
        description="send size limit; parsed fetch limit (`/raw` streams any size)",
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds to connect to a mail server"
    )
    command_timeout: float = Field(
        default=30.0, gt=0, le=600, description="seconds for one mail command's answer"
    )
    send_timeout: float = Field(
        default=120.0, gt=0, le=3600, description="seconds for a whole SMTP send"
    )
    stall_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="a client that reads nothing this long is cut"
    )
    remove_linger_seconds: float = Field(
        default=0.5,
        ge=0,
        le=30,
        description="mode=remove: after the peer acknowledged every byte, how long a reset of "
        "the connection (a client that hung up before reading it all) still cancels the removal",
    )
    ready_timeout: float = Field(
        default=2.0, gt=0, le=60, description="seconds for each `/readyz` connect"
    )
    pool_size_per_user: int = Field(
        default=8,
        ge=1,
        le=100,
        description="connections per mailbox and protocol (IMAP, POP3) and pod, shared by the "
        "workers; keep it below the server's per-user limit (Dovecot: 10 per user, IP and "
        "protocol) so the user's own mail apps get in too",
    )
    pool_idle_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="idle reusable IMAP sessions close after this"
    )
    pool_max_sessions: int = Field(
        default=512, ge=1, description="pooled sessions per worker, all mailboxes together"
    )
    summary_cache_entries: int = Field(
        default=20_000, ge=0, description="IMAP listing summaries kept (0: none)"
    )
    events_poll_seconds: float = Field(
        default=15.0,
        ge=0.05,
        le=3600,
        description="/events without IMAP IDLE (and on POP3): how often the server is asked",
    )
    events_idle_seconds: float = Field(
        default=1500.0,
        ge=1,
        le=1740,
        description="/events: IMAP IDLE is re-issued this often (RFC 2177: under 29 minutes)",
    )
    events_heartbeat_seconds: float = Field(
        default=15.0, gt=0, le=30, description="/events: a ': ping' comment when this quiet"
    )
    events_buffer: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="/events: events waiting for one slow client before its stream is dropped",
    )
    fetch_chunk_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="size of the partial fetches that stream a body",
    )
    warm_up: bool = Field(
        default=True,
        description="pay the first request's one-time costs at start-up (route plans, TLS "
        "contexts) and freeze start-up objects out of the garbage collector's scans",
    )
    mime_max_parts: int = Field(
        default=10_000,
        ge=2,
        le=1_000_000,
        description="MIME parts read per message, the message itself included (Dovecot's "
        "limit too); past it the part being read holds the rest of the message",
    )
    mime_max_depth: int = Field(
        default=50,
        ge=1,
        le=200,
        description="multipart nesting read per message; a deeper multipart is one part",
    )
    idempotency_ttl_seconds: int = Field(
        default=86400, ge=1, description="how long an `Idempotency-Key` answer is remembered"
    )
    idempotency_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="how long a duplicate waits for the answer of one with the same "
        "`Idempotency-Key` still being sent, before 409",
    )
    auth_failures_max: int = Field(
        default=20,
        ge=0,
        description="logins with a not-yet-proven secret per mailbox and window, all clients "
        "together, before 429 (0 turns the limiter off)",
    )
    auth_failures_per_client: int = Field(
        default=5,
        ge=1,
        description="the same per client address and mailbox",
    )
    auth_failures_window_seconds: int = Field(
        default=60, ge=1, le=86400, description="the window of the login limits"
    )
    auth_known_good_seconds: int = Field(
        default=86400,
        ge=0,
        description="a secret that logged in this recently is never limited, so guessers "
        "cannot lock the owner out (0: no exemption)",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="`redis://` or `rediss://` URL of the state replicas share (idempotency "
        "records, login limits); without it each process keeps its own",
    )
    redis_timeout: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="seconds per Redis call; after a failure Redis is skipped for 2 s",
    )
    state_key: SecretStr | None = Field(
        default=None,
        description="secret (32+ characters, the same on every replica) for the keyed hashes "
        "of credentials in the shared state; required with `MAILGATE_REDIS_URL` "
        "(random per process without it)",
    )
    host: str = Field(default="127.0.0.1", description="`mailgate serve` bind address (`--host`)")
    port: int = Field(default=8025, ge=1, le=65535, description="`mailgate serve` port (`--port`)")
    workers: int = Field(
        default=1, ge=1, le=64, description="`mailgate serve` worker processes (`--workers`)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="`debug`, `info`, `warning` or `error`"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="`json`: one JSON object per line; `text`: for a terminal"
    )

    _split = field_validator("api_key_hashes", "cors_origins", mode="before")(_csv)

    @property
    def mime_limits(self) -> Limits:
        """The MIME parsing budgets (parts, depth) for the parser and part downloads."""
        return Limits(max_parts=self.mime_max_parts, max_depth=self.mime_max_depth)

    @field_validator("api_key_hashes")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.lower()
            if len(item) != 64 or any(c not in "0123456789abcdef" for c in item):
                raise ValueError("each entry must be a hex SHA-256 digest (64 characters)")
            out.append(item)
        return out

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = urlsplit(value.get_secret_value()).scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("state_key")
    @classmethod
    def _state_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("ca_file", "providers_file")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_url(value, "smtp", info)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int, info: ValidationInfo) -> int:
        budget = info.data.get("pool_size_per_user")
        if budget is not None and value > budget:
            raise ValueError(
                f"{value} workers need at least one connection each per mailbox, more than "
                f"MAILGATE_POOL_SIZE_PER_USER ({budget}) allows together: use at most "
                f"{budget} workers, or raise the budget if the mail server allows it"
            )
        return value

    @field_validator("imap_url")
    @classmethod
    def _imap(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_url(value, "imap", info)

    @field_validator("pop3_url")
    @classmethod
    def _pop3(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_url(value, "pop3", info)

    def check_state(self) -> None:
        """ValueError when the shared state is configured without its key."""
        if self.redis_url is not None and self.state_key is None:
            raise ValueError("MAILGATE_STATE_KEY is required when MAILGATE_REDIS_URL is set")

    @property
    def pool_size_per_process(self) -> int:
        """Sessions per mailbox in one worker: the per-user budget shared by the workers,
        so that all workers together stay under the server's per user+IP limit."""
        return max(1, self.pool_size_per_user // self.workers)

    @cached_property
    def providers(self) -> dict[str, Provider]:
        """The default provider (named ``default``) plus those of the providers file."""
        out = {
            "default": Provider.from_urls(
                "default",
                {"smtp": self.smtp_url, "imap": self.imap_url, "pop3": self.pop3_url},
                allow_plaintext=self.allow_plaintext,
                ca_file=self.ca_file,
            )
        }
        if self.providers_file is not None:
            out.update(load_providers_file(self.providers_file, self.ca_file))
        return out

    def ssl_context(self, provider: Provider, service: str = "") -> ssl.SSLContext:
        """Verified TLS context: the provider's CA file, else the gateway's, else the system.
        One per CA file and ``service`` (``imap``, ``pop3``, ``smtp``), each resuming the
        TLS sessions of its own servers (:mod:`service.tls`)."""
        return _ssl_context(str(provider.ca_file or self.ca_file or ""), service)


def _check_url(value: str | None, protocol: str, info: ValidationInfo) -> str | None:
    if value:
        ServerUrl.parse(value, protocol, allow_plaintext=bool(info.data.get("allow_plaintext")))
    return value or None


_SSL_CACHE: dict[tuple[str, str], ssl.SSLContext] = {}


def _ssl_context(cafile: str, service: str) -> ssl.SSLContext:
    ctx = _SSL_CACHE.get((cafile, service))
    if ctx is None:
        ctx = _SSL_CACHE[(cafile, service)] = client_context(cafile or None)
    return ctx


def load_providers_file(path: Path, default_ca: Path | None) -> dict[str, Provider]:
    """Read ``{name: {smtp, imap, pop3, allow_plaintext, ca_file}}`` from JSON or TOML."""
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("the providers file must map names to providers")
    out: dict[str, Provider] = {}
    for name, spec in data.items():
        if not isinstance(spec, dict) or not name or not name.replace("-", "").isalnum():
            raise ValueError(f"provider {name!r}: expected an object and a simple name")
        ca = spec.get("ca_file")
        out[name] = Provider.from_urls(
            name,
            {p: spec.get(p) for p in ("smtp", "imap", "pop3")},
            allow_plaintext=bool(spec.get("allow_plaintext", False)),
            ca_file=Path(ca) if ca else default_ca,
        )
    return out


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``MAILGATE_*`` variables that name no setting, each with the closest real name
    (or None): a misspelt variable would otherwise be ignored silently."""
    known = [name.upper() for name in Settings.model_fields]
    out = []
    for name in sorted(environ):
        rest = name.removeprefix("MAILGATE_")
        if rest != name and rest not in known:
            close = difflib.get_close_matches(rest, known, n=1, cutoff=0.8)
            out.append((name, "MAILGATE_" + close[0] if close else None))
    return out


class SettingsError(Exception):
    """A setting is invalid; the message is one line that names the variable."""


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; SettingsError names the bad variable."""
    try:
        settings = Settings(**overrides)
        _ = settings.providers
    except ValidationError as exc:
        err = exc.errors()[0]
        var = "MAILGATE_" + str(err["loc"][0]).upper() if err["loc"] else "MAILGATE_*"
        raise SettingsError(f"invalid setting {var}: {err['msg']}") from None
    except (ValueError, OSError) as exc:
        raise SettingsError(f"invalid setting MAILGATE_PROVIDERS_FILE: {exc}") from None
    try:
        settings.check_state()
    except ValueError:
        raise SettingsError(
            "invalid setting MAILGATE_STATE_KEY: required (at least 32 characters, the same "
            "on every replica) when MAILGATE_REDIS_URL is set"
        ) from None
    return settings

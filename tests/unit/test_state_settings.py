"""Shared-state settings: Redis needs its key, and the example deployment provides both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.config import SettingsError, load_settings

KEY = "k" * 32
EXAMPLE_SECRET = Path(__file__).resolve().parents[2] / "k8s/overlays/example/secret.yaml"


def test_redis_without_a_state_key_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(redis_url="redis://127.0.0.1:6379/0")
    message = str(info.value)
    assert message.startswith("invalid setting MAILGATE_STATE_KEY:") and "\n" not in message
    assert load_settings(redis_url="redis://127.0.0.1:6379/0", state_key=KEY).redis_url


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("redis_url", "http://redis.example.com", "MAILGATE_REDIS_URL"),
        ("state_key", "too-short", "MAILGATE_STATE_KEY"),
    ],
)
def test_bad_state_settings_name_their_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^invalid setting {variable}:") as info:
        load_settings(
            **{field: value, "state_key": KEY} if field == "redis_url" else {field: value}
        )
    assert value not in str(info.value)  # a secret is never echoed


def test_the_example_secret_gives_redis_its_key() -> None:
    data = yaml.safe_load(EXAMPLE_SECRET.read_text())["stringData"]
    settings = load_settings(**{k.removeprefix("MAILGATE_").lower(): v for k, v in data.items()})
    assert settings.redis_url is not None and settings.state_key is not None

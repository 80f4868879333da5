"""The Kubernetes manifests agree with the app: probes, port, a non-root user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "k8s" / "deployment.yaml").read_text()) if d]


def test_deployment_probes_ports_and_security() -> None:
    by_kind = {d["kind"]: d for d in docs()}
    assert set(by_kind) >= {"Deployment", "Service", "ConfigMap"}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    paths = set(create_app(Settings()).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] in paths
    assert container["livenessProbe"]["httpGet"]["path"] in paths
    [port] = container["ports"]
    assert port["containerPort"] == Settings().port
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["serve"]
    config = by_kind["ConfigMap"]["data"]
    Settings(**{k.removeprefix("MAILGATE_").lower(): v for k, v in config.items()})  # valid
    service = by_kind["Service"]["spec"]
    assert service["selector"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]

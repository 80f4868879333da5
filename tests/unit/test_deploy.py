"""The Kubernetes manifests agree with the app and with the Kubernetes schemas.

Rendered from the kustomize base and the example overlay (tests/k8s_render.py, the
subset of kustomize that k8s/ uses) and validated offline with kubernetes-validate
--strict (no unknown fields) against the latest schemas it ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from k8s_render import render

from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
EXAMPLE = ROOT / "k8s" / "overlays" / "example"


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "one object per kind"
    return out


@pytest.mark.parametrize("where", [BASE, EXAMPLE], ids=["base", "example"])
def test_manifests_are_valid_kubernetes_objects(where: Path) -> None:
    version = kubernetes_validate.latest_version()
    for doc in render(where):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("where", [BASE, EXAMPLE], ids=["base", "example"])
def test_deployment_probes_ports_security_and_shutdown(where: Path) -> None:
    objs = by_kind(render(where))
    assert set(objs) >= {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget", "NetworkPolicy"}  # fmt: skip
    deployment = objs["Deployment"]
    template = deployment["spec"]["template"]
    pod = template["spec"]
    [container] = pod["containers"]
    paths = set(create_app(Settings()).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] in paths
    assert container["livenessProbe"]["httpGet"]["path"] in paths
    [port] = container["ports"]
    assert port["containerPort"] == Settings().port
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]  # metrics dir
    assert container["args"] == ["serve"]
    config = objs["ConfigMap"]["data"]
    settings = Settings(**{k.removeprefix("MAILGATE_").lower(): v for k, v in config.items()})
    # a send in flight when the pod is stopped may run MAILGATE_SEND_TIMEOUT after preStop
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + settings.send_timeout
    # scrape annotations point at the real metrics endpoint
    notes = template["metadata"]["annotations"]
    assert notes["prometheus.io/path"] in paths and notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == port["containerPort"]
    # every selector selects the pods
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = objs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "mailgate"
    # in: the HTTP port only; out: DNS and the configured mail servers' ports
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": port["name"]}]}]
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert 53 in egress
    for provider in settings.providers.values():
        for proto in ("smtp", "imap", "pop3"):
            server = provider.server(proto)
            assert server is None or server.port in egress, (proto, server)
    # the optional Secret (API key hashes, the replicas' shared state)
    assert {"secretRef": {"name": "mailgate", "optional": True}} in container["envFrom"]


def test_example_overlay_pins_the_image_and_brings_the_secret() -> None:
    objs = by_kind(render(EXAMPLE))
    assert {d["metadata"].get("namespace") for d in objs.values()} == {"mailgate"}
    [container] = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/mailgate:0.1.0"
    assert objs["Deployment"]["spec"]["replicas"] == 3
    secret = objs["Secret"]
    assert secret["metadata"]["name"] == "mailgate"
    assert set(secret["stringData"]) == {
        "MAILGATE_API_KEY_HASHES", "MAILGATE_REDIS_URL", "MAILGATE_STATE_KEY",
    }  # fmt: skip
    Settings(api_key_hashes=secret["stringData"]["MAILGATE_API_KEY_HASHES"])  # valid form


def test_renderer_refuses_what_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: []\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        render(tmp_path)

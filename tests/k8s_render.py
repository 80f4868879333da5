"""Render a kustomization as `kubectl kustomize` would, for the subset k8s/ uses.

kustomize itself is in none of the registries CI reaches, so the tests render with this
and jsonpatch (RFC 6902) and refuse any kustomization field outside the subset, so that
a new feature in k8s/ fails here instead of being skipped: resources (files and
directories), namespace, labels (pairs, includeSelectors), images (newName, newTag) and
patches (inline JSON 6902 with a kind/name target).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents ``directory``'s kustomization.yaml produces."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not rendered here: {unknown}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = copy.deepcopy(docs)
    for label in spec.get("labels", []):
        for doc in docs:
            _label(doc, label["pairs"], bool(label.get("includeSelectors")))
    for image in spec.get("images", []):
        for doc in docs:
            for c in _containers(doc):
                name, _, _ = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        for i, doc in enumerate(docs):
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                docs[i] = jsonpatch.apply_patch(doc, ops)
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", []))


def _label(doc: dict[str, Any], pairs: dict[str, str], selectors: bool) -> None:
    doc["metadata"].setdefault("labels", {}).update(pairs)
    spec = doc.get("spec", {})
    if "template" in spec:
        spec["template"]["metadata"].setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    if doc["kind"] == "Service":
        spec.setdefault("selector", {}).update(pairs)
    elif doc["kind"] == "NetworkPolicy":
        spec["podSelector"].setdefault("matchLabels", {}).update(pairs)
    elif "selector" in spec and doc["kind"] != "HorizontalPodAutoscaler":
        spec["selector"].setdefault("matchLabels", {}).update(pairs)

"""The committed Kubernetes recipe (``deploy/k8s``) as the deployment tests
read it: the commands the keys Secret documents, and a container's
environment as the kubelet makes it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
_REFERENCE = re.compile(r"\$\((\w+)\)")


def kubelet_env(items: list[dict[str, Any]], pod: str, namespace: str) -> dict[str, str]:
    """A container's variables (its ``env`` list) as the kubelet makes them:
    HOSTNAME, the downward API's fields, then each value with $(VAR)
    expanded from the variables defined before it (a reference to a later
    or unknown one stays as written)."""
    env = {"HOSTNAME": pod}
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    for item in items:
        if "value" in item:
            env[item["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(item["value"]))
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def documented_commands() -> list[list[str]]:
    """The ``fleetsuit ...`` commands secret.yaml tells the operator to run
    (its comments; a trailing backslash continues a command)."""
    lines = [line[1:].strip() for line in (K8S / "secret.yaml").read_text().splitlines()
             if line.startswith("#")]
    commands, current = [], ""
    for line in lines:
        if not current and not line.startswith("fleetsuit "):
            continue
        current += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            commands.append(shlex.split(current))
            current = ""
    assert not current, f"secret.yaml: a command continues past its comment: {current}"
    return commands

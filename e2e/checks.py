"""What the run checks from this machine: the exported kubeconfig reaches the API, and the nodes."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REQUEST_TIMEOUT = 15


class CheckError(Exception):
    """A check failed; the message says what was expected and what was found."""


def _current(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for entry in doc.get(kind) or []:
        if entry.get("name") == name:
            return entry[kind.rstrip("s")]
    raise CheckError(f"kubeconfig: no {kind.rstrip('s')} named {name!r}")


def kubeconfig_credentials(kubeconfig: str) -> tuple[str, bytes, bytes, bytes]:
    """(server, CA PEM, client certificate PEM, client key PEM) of the current context."""
    doc = yaml.safe_load(kubeconfig) or {}
    context = _current(doc, "contexts", doc.get("current-context", ""))
    cluster = _current(doc, "clusters", context["cluster"])
    user = _current(doc, "users", context["user"])
    try:
        return (
            cluster["server"],
            base64.b64decode(cluster["certificate-authority-data"]),
            base64.b64decode(user["client-certificate-data"]),
            base64.b64decode(user["client-key-data"]),
        )
    except KeyError as err:
        raise CheckError(f"kubeconfig: {err.args[0]} is missing (expected embedded certificate data)") from None


def api_get(kubeconfig: str, path: str) -> dict[str, Any]:
    """GET an API path as the kubeconfig's user: its CA, its client certificate, its server name."""
    server, ca, cert, key = kubeconfig_credentials(kubeconfig)
    context = ssl.create_default_context(cadata=ca.decode())
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for file, data in ((cert_file, cert), (key_file, key)):
            file.touch(mode=0o600)
            file.write_bytes(data)
        context.load_cert_chain(cert_file, key_file)
    url = server.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, context=context, timeout=REQUEST_TIMEOUT) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise CheckError(f"GET {url} with the exported kubeconfig failed: {err}") from err


def fetch_nodes(kubeconfig: str) -> list[dict[str, Any]]:
    return api_get(kubeconfig, "/api/v1/nodes").get("items", [])


def node_problems(nodes: list[dict[str, Any]], expected: set[str]) -> list[str]:
    """Every way the node list differs from `expected`, all of them Ready."""
    ready = {}
    for node in nodes:
        conditions = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
        ready[node["metadata"]["name"]] = conditions.get("Ready") == "True"
    problems = [f"node {n} is missing" for n in sorted(expected - ready.keys())]
    problems += [f"node {n} should not exist" for n in sorted(ready.keys() - expected)]
    problems += [f"node {n} is not Ready" for n in sorted(expected & ready.keys()) if not ready[n]]
    return problems


def wait_for_nodes(
    fetch: Callable[[], list[dict[str, Any]]],
    expected: set[str],
    attempts: int,
    interval: float,
    sleep: Callable[[float], None],
) -> None:
    """Poll until the nodes are exactly `expected`, all Ready; bounded by attempts x interval."""
    problems: list[str] = []
    for attempt in range(attempts):
        try:
            problems = node_problems(fetch(), expected)
        except CheckError as err:
            problems = [str(err)]
        if not problems:
            return
        if attempt + 1 < attempts:
            sleep(interval)
    raise CheckError(f"nodes after {attempts} attempts {interval:g} s apart: " + "; ".join(problems))


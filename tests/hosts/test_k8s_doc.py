"""deploy/README.md's Kubernetes layout for tables across hosts, as written: valid against the
Kubernetes schemas, its flags the ones the commands take, its ports the ones they use."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serving.commands.worker import add_flags as worker_flags
from serving.settings import BY_NAME
from serving.settings import add_flags as serve_flags

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ["1.30.0", "1.34.0"]


def documents() -> dict[str, dict[str, Any]]:
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("## Tables across hosts in Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the section"
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(block[1])}


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_resource_is_valid_strictly(version: str) -> None:
    docs = documents()
    assert set(docs) == {
        "Service/seqserve-front",
        "StatefulSet/seqserve-front",
        "StatefulSet/seqserve-worker",
    }
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def container(doc: dict[str, Any]) -> dict[str, Any]:
    [c] = doc["spec"]["template"]["spec"]["containers"]
    return c


def test_the_workers_find_the_front_pod_on_its_ports_before_it_is_ready() -> None:
    docs = documents()
    service, front = docs["Service/seqserve-front"], docs["StatefulSet/seqserve-front"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"] == front["spec"]["template"]["metadata"]["labels"]
    serve = argparse.ArgumentParser()
    serve_flags(serve)
    argv = container(front)["command"]
    assert argv[:2] == ["seqserve", "serve"]
    args = serve.parse_args(argv[2:])
    assert args.host == "0.0.0.0" and args.engine == "distributed" and args.nnodes == 2
    master = args.master_port
    assert {p["port"] for p in service["spec"]["ports"]} == {master, master + 1}
    listed = {p["containerPort"] for p in container(front)["ports"]}
    assert {BY_NAME["port"].default, BY_NAME["grpc_port"].default, master, master + 1} == listed

    # The worker's command line, as its shell would run it in pod seqserve-worker-0.
    shell = container(docs["StatefulSet/seqserve-worker"])["command"]
    assert shell[:2] == ["sh", "-c"]
    line = shell[2].replace("$(( ${HOSTNAME##*-} + 1 ))", "1")
    words = shlex.split(line)
    assert words[:3] == ["exec", "seqserve", "worker"]
    worker = argparse.ArgumentParser()
    worker_flags(worker)
    w = worker.parse_args(words[3:])
    assert w.master_addr == service["metadata"]["name"] and w.master_port == master
    assert w.nnodes == args.nnodes and w.node_rank == 1
    replicas = docs["StatefulSet/seqserve-worker"]["spec"]["replicas"]
    assert replicas == args.nnodes - 1
    # Both read the key from the same Secret.
    keys = [
        [e for e in container(docs[d])["env"] if e["name"] == "SEQSERVE_CLUSTER_KEY"]
        for d in ("StatefulSet/seqserve-front", "StatefulSet/seqserve-worker")
    ]
    assert keys[0] == keys[1] and keys[0][0]["valueFrom"]["secretKeyRef"]

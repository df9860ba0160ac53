"""deploy/: the Kubernetes manifests validate against a pinned Kubernetes version's schemas,
and their image, user, ports, probes, flags and model agree with the Dockerfile, compose, the
server's settings and the server itself; the KServe runtime and InferenceService too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serving.commands.cli import build_parser
from serving.config import parse_spec
from serving.settings import OPTIONS
from tests.deploy import kserve_sdk
from tests.docker.files import DOCKER, service, stages
from tests.http.server import Server

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
# The Kubernetes versions the manifests are checked against (schemas bundled with the pinned
# kubernetes-validate): the oldest and newest minor we claim.
KUBERNETES = ["1.30.0", "1.34.0"]
PROBES = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}


def load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc  # type: ignore[no-any-return]


def manifests() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("name", sorted(manifests()))
def test_every_manifest_validates_strictly(name: str, version: str) -> None:
    kubernetes_validate.validate(manifests()[name], version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    doc = manifests()["deployment.yaml"]
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(doc, KUBERNETES[-1], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(set(manifests()) - {"secret.example.yaml"})
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == service("api")["image"]


def container() -> dict[str, Any]:
    (c,) = manifests()["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_the_deployment_agrees_with_the_image_the_settings_and_the_model() -> None:
    docs = manifests()
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    c, env = container(), env_of(container())
    api = service("api")
    assert c["image"] == api["image"]
    (api_stage,) = [s for s in stages(DOCKER / "Dockerfile") if s.name == "api"]
    exposed = {int(p) for ins in api_stage.all("EXPOSE") for p in ins.args.split()}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env["SEQSERVE_PORT"]), "grpc": int(env["SEQSERVE_GRPC_PORT"])}
    assert set(ports.values()) == exposed
    # The server's own flags and variables.
    build_parser().parse_args(c["command"][1:])
    declared = {o.env for o in OPTIONS} | {"SEQSERVE_MODEL"}
    assert set(env) <= declared, set(env) - declared
    assert env["SEQSERVE_AUTH_TOKEN"] == {
        "secretKeyRef": {"name": "seqserve-token", "key": "token"}
    }
    assert docs["secret.example.yaml"]["metadata"]["name"] == "seqserve-token"
    # Probes: the Open Inference Protocol's health routes, on the HTTP port.
    for probe, path in PROBES.items():
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    # Non-root (the image's user), read-only root filesystem, no privileges.
    users = {
        ins.args.split(":")[0]
        for st in stages(DOCKER / "Dockerfile")
        if st.name in ("app", "api")  # api is built on app, whose user it runs as
        for ins in st.all("USER")
    }
    (uid,) = {int(u) for u in users}
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == uid
    )
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    # The model: from the ConfigMap, its weights from the volume; world_size + 1 cores.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["configMap"]["name"] == docs["configmap.yaml"]["metadata"]["name"]
    assert env["SEQSERVE_MODEL"] == f"{mounts['model']}/model.yaml"
    claim = volumes["weights"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["pvc.yaml"]["metadata"]["name"]
    spec = parse_spec(yaml.safe_load(docs["configmap.yaml"]["data"]["model.yaml"]))
    assert spec.weights is not None and str(spec.weights.safetensors).startswith(mounts["weights"])
    assert c["resources"]["requests"]["cpu"] == str(spec.sharding.world_size + 1)


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    docs = manifests()
    labels = docs["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    svc = docs["service.yaml"]["spec"]
    assert svc["selector"] == labels
    assert {p["name"]: p["targetPort"] for p in svc["ports"]} == {"http": "http", "grpc": "grpc"}
    assert docs["pdb.yaml"]["spec"]["selector"]["matchLabels"] == labels
    target = docs["hpa.yaml"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        docs["deployment.yaml"]["metadata"]["name"],
    )
    assert docs["pdb.yaml"]["spec"]["minAvailable"] < docs["hpa.yaml"]["spec"]["minReplicas"]


def test_the_probe_paths_answer_on_a_real_server(server: Server) -> None:
    for path in PROBES.values():
        assert server.client.get(path).status_code == 200, path


# Kubernetes types inside KServe's resources, checked where Kubernetes would hold them.
WRAP = {
    "V1Container": lambda d: {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [d]},
    },
    "V1ObjectMeta": lambda d: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": d},
}


def kubernetes_part(kind: str, doc: Any) -> list[str]:
    if kind not in WRAP:
        return [f"no check here for the Kubernetes type {kind}: add one to WRAP"]
    try:
        kubernetes_validate.validate(WRAP[kind](doc), KUBERNETES[-1], strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{kind}: {e.message}"]
    return []


KSERVE_KINDS = {
    "servingruntime.yaml": (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        "V1alpha1ServingRuntime",
    ),
    "inferenceservice.yaml": (
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "V1beta1InferenceService",
    ),
}


@pytest.mark.parametrize("name", sorted(KSERVE_KINDS))
def test_the_kserve_resources_validate_against_kserves_sdk_models(name: str) -> None:
    doc = load(KSERVE / name)
    api_version, kind, model = KSERVE_KINDS[name]
    assert (doc["apiVersion"], doc["kind"]) == (api_version, kind)
    assert kserve_sdk.check(doc, model, kubernetes_part) == []


def test_the_kserve_check_catches_misspelt_missing_and_mistyped_fields() -> None:
    isvc = load(KSERVE / "inferenceservice.yaml")
    isvc["spec"]["predictor"]["model"]["protocolVerison"] = "v2"
    del isvc["spec"]["predictor"]["model"]["modelFormat"]
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    problems = kserve_sdk.check(isvc, "V1beta1InferenceService", kubernetes_part)
    assert sorted(problems) == [
        ".spec.predictor.minReplicas: a int, not 'one'",
        ".spec.predictor.model.protocolVerison: not a field of V1beta1ModelSpec",
        ".spec.predictor.model: V1beta1ModelSpec requires 'modelFormat'",
    ]
    runtime = load(KSERVE / "servingruntime.yaml")
    runtime["spec"]["containers"][0]["readOnlyRootFilesystem"] = True  # belongs in securityContext
    (problem,) = kserve_sdk.check(runtime, "V1alpha1ServingRuntime", kubernetes_part)
    assert "readOnlyRootFilesystem" in problem and problem.startswith(".spec.containers[0]")


def test_the_kserve_runtime_serves_v2_with_our_image_and_the_service_uses_it() -> None:
    runtime, isvc = load(KSERVE / "servingruntime.yaml"), load(KSERVE / "inferenceservice.yaml")
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container" and c["image"] == service("api")["image"]
    build_parser().parse_args(c["command"][1:])
    env = env_of(c)
    assert c["ports"] == [{"containerPort": int(env["SEQSERVE_PORT"]), "protocol": "TCP"}]
    assert env["SEQSERVE_MODEL"] == "/mnt/models/model.yaml"  # KServe's storage initializer
    for probe, path in PROBES.items():
        assert c[probe]["httpGet"] == {"path": path, "port": int(env["SEQSERVE_PORT"])}
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats

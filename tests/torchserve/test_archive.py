"""The .mar holds what the handler needs and nothing from the developer's machine."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from serving.commands.torchserve import archive
from serving.config import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_archive_contents(model_path: Path, tmp_path: Path) -> None:
    mar = archive(load_spec(model_path), tmp_path / "store")
    assert mar == tmp_path / "store" / "small.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        spec = yaml.safe_load(z.read("model.yaml"))
        config = yaml.safe_load(z.read(manifest["model"]["configFile"]))
        texts = {n: z.read(n) for n in names if n.endswith((".py", ".yaml", ".json"))}
    assert manifest["model"]["handler"] == "seqserve_handler.py"
    assert {"seqserve_handler.py", "model.yaml", "weights.safetensors"} <= names
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "serving").rglob("*.py")}
    assert package <= names, "the serving package travels whole"
    # Nothing of this machine: no caches, no tests, no venv, no absolute paths.
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", ".venv/", ".git/"))]
    assert spec["weights"] == {"safetensors": "weights.safetensors"}
    for name, text in texts.items():
        assert str(ROOT).encode() not in text and str(tmp_path).encode() not in text, name
    # The local engine (the default) runs in one worker: no torchrun.
    assert "parallelType" not in config and "torchrun" not in config
    assert config["handler"]["spec"] == "model.yaml"


def test_a_distributed_spec_archives_for_torchrun(tmp_path: Path) -> None:
    from tests.http.server import write_small_model

    mar = archive(load_spec(write_small_model(tmp_path, "distributed")), tmp_path / "store")
    with zipfile.ZipFile(mar) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(z.read(manifest["model"]["configFile"]))
        assert yaml.safe_load(z.read("model.yaml"))["sharding"]["engine"] == "distributed"
    assert config["parallelType"] == "tp" and config["torchrun"]["nproc-per-node"] == 2


def test_archive_refuses_a_bad_spec(tmp_path: Path) -> None:
    from serving.commands.demo import demo_spec
    from serving.config import WeightsSpec
    from serving.errors import SpecError

    spec = demo_spec().model_copy(
        update={"weights": WeightsSpec(safetensors=tmp_path / "missing.safetensors")}
    )
    with pytest.raises(SpecError, match="does not exist"):
        archive(spec, tmp_path / "store")

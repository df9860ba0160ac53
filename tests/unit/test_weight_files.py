"""Weight files that cannot be used are SpecErrors in words, never a crash: a reload of them
is a 400 and the served weights stay."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from serving.engine import dcp as checkpoints
from serving.engine.files import readable_file
from serving.errors import SpecError
from tests.distributed.plans import spec

SPEC = spec(1, 8, [("items", 100, ["a"], 0)])


def test_only_a_readable_file_passes(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"x")
    readable_file(tmp_path / "w.safetensors", "safetensors file")
    for path, message in [
        (tmp_path / "none.safetensors", "does not exist"),
        (tmp_path, "is not a file"),
        (Path("/dev/null"), "is not a file"),
        (tmp_path / ("a" * 300), "cannot be read: File name too long"),
    ]:
        with pytest.raises(SpecError, match=message):
            readable_file(path, "safetensors file")


def test_a_corrupt_checkpoint_is_a_spec_error_naming_the_table(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        state = {"sparse.ec.embeddings.items.weight": torch.randn(100, 8)}
        dcp.save(state, checkpoint_id=str(tmp_path), no_dist=True)
    table = SPEC.tables[0]
    assert checkpoints.read_table(SPEC, tmp_path, table).shape == (100, 8)
    (data,) = tmp_path.glob("*.distcp")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(SpecError, match=r"table 'items': cannot read it from checkpoint .*: \w+"):
        checkpoints.read_table(SPEC, tmp_path, table)

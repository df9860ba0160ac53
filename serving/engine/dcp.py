"""Weights from a torch.distributed.checkpoint written by a TorchRec training job.

The job may have used any plan (row-wise, table-wise, ...): DCP reshards on load into this
server's column-wise shards. DCP metadata is pickled, so a checkpoint is trusted input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from serving.config import ModelSpec, TableSpec
from serving.engine.files import readable_file
from serving.engine.model import state_key
from serving.errors import SpecError


def _metadata(path: Path) -> dict[str, object]:
    try:
        found = (path / ".metadata").exists()
    except OSError as e:  # e.g. a folder this process may not enter
        raise SpecError(f"weights: checkpoint {path} cannot be read: {e.strerror}") from None
    if not found:
        raise SpecError(f"weights: {path} is not a torch.distributed.checkpoint (no .metadata)")
    readable_file(path / ".metadata", "checkpoint metadata")
    try:
        return dict(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except Exception as e:
        raise SpecError(f"weights: cannot read checkpoint metadata in {path}: {e}") from e


def checkpoint_keys(spec: ModelSpec, path: Path) -> dict[str, str]:
    """Table name -> its key in the checkpoint, e.g. 'sparse.ec.embeddings.items.weight'."""
    meta = _metadata(path)
    keys = {}
    for t in spec.tables:
        suffix = f"embeddings.{t.name}.weight"
        found = [k for k in meta if k == suffix or k.endswith("." + suffix)]
        if len(found) != 1:
            what = "no key" if not found else f"{len(found)} keys ({', '.join(sorted(found))})"
            raise SpecError(f"table '{t.name}': {what} ending in '{suffix}' in checkpoint {path}")
        entry = meta[found[0]]
        size = tuple(entry.size) if isinstance(entry, TensorStorageMetadata) else None
        want = (t.num_embeddings, t.embedding_dim)
        if size != want:
            raise SpecError(
                f"table '{t.name}': checkpoint tensor '{found[0]}' has shape "
                f"{list(size) if size else 'none'}, not [num_embeddings, embedding_dim] = "
                f"{list(want)}"
            )
        keys[t.name] = found[0]
    return keys


def check(spec: ModelSpec, path: Path) -> None:
    checkpoint_keys(spec, path)


def load(spec: ModelSpec, model: torch.nn.Module, path: Path) -> None:
    """Collective: every rank calls it; each one receives exactly its own shards."""
    keys = checkpoint_keys(spec, path)
    state = model.state_dict()
    wanted = {keys[t.name]: state[state_key(i)] for i, t in enumerate(spec.tables)}
    dcp.load(wanted, storage_reader=dcp.FileSystemReader(str(path)))


def full_tables(spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    keys = checkpoint_keys(spec, path)
    return {t.name: _read_table(keys[t.name], t, path) for t in spec.tables}


def read_table(spec: ModelSpec, path: Path, table: TableSpec) -> torch.Tensor:
    """One table whole, float32, in this process."""
    return _read_table(checkpoint_keys(spec, path)[table.name], table, path)


def _read_table(key: str, table: TableSpec, path: Path) -> torch.Tensor:
    out = torch.empty(table.num_embeddings, table.embedding_dim)
    with warnings.catch_warnings():
        # Loading in one process on purpose; DCP warns about it.
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        try:
            dcp.load({key: out}, checkpoint_id=str(path), no_dist=True)
        except CheckpointException as e:  # a BaseException: name the first failure only
            first = next(iter(e.failures.values()), None)
            why = f"{type(first[0]).__name__}: {first[0]}" if first else "unknown failure"
            msg = f"table '{table.name}': cannot read it from checkpoint {path}: {why}"
            raise SpecError(msg) from None
    return out

"""One sharded forward on this rank: shared by the rank processes and the TorchServe handler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from serving.config import ModelSpec


def lookup(
    model: torch.nn.Module,
    device: torch.device,
    keys: Sequence[str],
    lengths: np.ndarray,
    values: np.ndarray,
) -> list[torch.Tensor]:
    """Rows per key for a key-major batch: input dist, fused lookup, output dist, stitch.

    Collective: every rank of the group must call it, a rank with nothing to look up passing
    one empty sequence per key (TorchRec's output construction rejects a stride of 0).
    """
    kjt = KeyedJaggedTensor(
        keys=list(keys), values=torch.from_numpy(values), lengths=torch.from_numpy(lengths)
    ).to(device)
    with torch.no_grad():
        out = model(kjt)
        jts = out.wait() if hasattr(out, "wait") else out
        return [jts[k].values() for k in keys]


def idle_batch(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and values of one empty sequence per key."""
    return np.zeros(len(keys), np.int32), np.zeros(0, np.int64)


def warm_up(spec: ModelSpec, model: torch.nn.Module, device: torch.device) -> None:
    # Every rank runs the same collective sequence; the first forward builds TorchRec's
    # input-dist state, so it is paid here rather than by the first request.
    keys = spec.features
    rows = spec.table_of()
    values = np.concatenate([np.array([0, rows[k].num_embeddings - 1]) for k in keys])
    lookup(model, device, keys, np.full(len(keys), 2, np.int32), values)

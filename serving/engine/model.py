"""Model spec -> TorchRec EmbeddingCollection configs, the unsharded reference, and the shard
views that weight loading fills (both engines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torchrec import EmbeddingCollection, EmbeddingConfig

from serving.config import ModelSpec


def internal_name(index: int) -> str:
    # Spec names are free text, but EmbeddingCollection keeps tables in an nn.ModuleDict, where
    # a name like "items" or "keys" collides with a method. Positional names never do.
    return f"t{index}"


def embedding_configs(spec: ModelSpec) -> list[EmbeddingConfig]:
    return [
        EmbeddingConfig(
            name=internal_name(i),
            num_embeddings=t.num_embeddings,
            embedding_dim=t.embedding_dim,
            feature_names=list(t.features),
        )
        for i, t in enumerate(spec.tables)
    ]


def unsharded(spec: ModelSpec, weights: Mapping[str, torch.Tensor]) -> EmbeddingCollection:
    """The reference: a plain in-process EmbeddingCollection holding `weights[table]`."""
    ec = EmbeddingCollection(tables=embedding_configs(spec), device=torch.device("cpu"))
    with torch.no_grad():
        for i, t in enumerate(spec.tables):
            ec.embeddings[internal_name(i)].weight.copy_(weights[t.name])
    return ec


@dataclass(frozen=True)
class LocalShard:
    table: str  # spec name
    rows: tuple[int, int]  # [start, end)
    cols: tuple[int, int]
    tensor: torch.Tensor  # a view into FBGEMM's weights: writing it loads the shard

"""Model spec -> TorchRec EmbeddingCollection configs, the unsharded reference, and the shard
views that weight loading fills (both engines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao import quantization as quant
from torchrec import EmbeddingCollection, EmbeddingConfig, JaggedTensor, KeyedJaggedTensor
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection
from torchrec.quant.embedding_modules import QuantConfig

from serving.config import ModelSpec
from serving.engine.stored import Rows


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


class Unsharded(nn.Module):
    """The reference: plain in-process TorchRec collections holding whole tables, one per
    (dim, dtype), since one EmbeddingCollection has one dim. fp16 and int8 tables sit in
    TorchRec's QuantEmbeddingCollection, quantized by TorchRec from the float32 rows.
    Called with a KeyedJaggedTensor of the spec's keys, like an EmbeddingCollection."""

    def __init__(self, spec: ModelSpec, weights: Mapping[str, torch.Tensor]):
        super().__init__()
        groups: dict[tuple[int, str], list[int]] = {}
        for i, t in enumerate(spec.tables):
            groups.setdefault((t.embedding_dim, t.dtype), []).append(i)
        configs = embedding_configs(spec)
        self.collections = nn.ModuleList()
        self.keys: list[list[str]] = []
        for (_, dtype), members in groups.items():
            ec = EmbeddingCollection(
                tables=[configs[i] for i in members], device=torch.device("cpu")
            )
            with torch.no_grad():
                for i in members:
                    ec.embeddings[internal_name(i)].weight.copy_(weights[spec.tables[i].name])
            self.collections.append(ec if dtype == "fp32" else quantized(ec, dtype))
            self.keys.append([f for i in members for f in spec.tables[i].features])

    def forward(self, kjt: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        if len(self.collections) == 1:
            return self.collections[0](kjt)
        by_key = kjt.to_dict()
        out: dict[str, JaggedTensor] = {}
        for ec, keys in zip(self.collections, self.keys, strict=True):
            out.update(ec(KeyedJaggedTensor.from_jt_dict({k: by_key[k] for k in keys})))
        return out


def quantized(ec: EmbeddingCollection, dtype: str) -> nn.Module:
    """TorchRec's own quantized copy of `ec` (FBGEMM's inference kernel underneath)."""
    weight = {"fp16": torch.float16, "int8": torch.qint8}[dtype]
    ec.qconfig = QuantConfig(
        activation=quant.PlaceholderObserver.with_args(dtype=torch.float),
        weight=quant.PlaceholderObserver.with_args(dtype=weight),
    )
    return QuantEmbeddingCollection.from_float(ec)


def unsharded(spec: ModelSpec, weights: Mapping[str, torch.Tensor]) -> Unsharded:
    return Unsharded(spec, weights)


def served_tables(spec: ModelSpec, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every table's rows as answers carry them, from its float32 `weights`: fp32 as given,
    fp16 and int8 as TorchRec's quantized collection reads every row back (what both engines
    answer, bit for bit). For checking answers; it builds the reference, whole tables."""
    out = {t.name: weights[t.name] for t in spec.tables if t.dtype == "fp32"}
    quantized = [t for t in spec.tables if t.dtype != "fp32"]
    if not quantized:
        return out
    asked = {t.features[0]: t for t in quantized}  # one feature reads each table whole
    keys = [f for t in spec.tables for f in t.features]
    lengths = [asked[k].num_embeddings if k in asked else 0 for k in keys]
    values = torch.cat([torch.arange(asked[k].num_embeddings) for k in keys if k in asked])
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=torch.tensor(lengths))
    with torch.no_grad():
        rows = Unsharded(spec, weights)(kjt)
    out.update({t.name: rows[f].values().float() for f, t in asked.items()})
    return out


@dataclass(frozen=True)
class LocalShard:
    table: str  # spec name
    rows: tuple[int, int]  # [start, end)
    cols: tuple[int, int]
    tensor: torch.Tensor  # a view into FBGEMM's weights, in the stored dtype: writing it loads
    scale_shift: torch.Tensor | None = None  # int8: the rows' [n, 4] scale and bias bytes

    def write(self, at: int, rows: Rows) -> int:
        """Take this shard's part of the table's whole rows [at, at + len(rows)), in stored
        form; returns how many elements it wrote."""
        (r0, r1), (c0, c1) = self.rows, self.cols
        lo, hi = max(at, r0), min(at + len(rows), r1)
        if lo >= hi:
            return 0
        self.tensor[lo - r0 : hi - r0].copy_(rows.data[lo - at : hi - at, c0:c1])
        if self.scale_shift is not None:
            assert rows.scale_shift is not None, "int8 shard given rows without scales"
            self.scale_shift[lo - r0 : hi - r0].copy_(rows.scale_shift[lo - at : hi - at])
        return (hi - lo) * (c1 - c0)

    def write_ids(self, ids: torch.Tensor, rows: Rows) -> None:
        """Replace rows `ids` (of the table, within this shard's rows) with whole rows in
        stored form."""
        (r0, _), (c0, c1) = self.rows, self.cols
        at = (ids - r0).to(self.tensor.device)
        self.tensor.index_copy_(0, at, rows.data[:, c0:c1].to(self.tensor.device))
        if self.scale_shift is not None:
            assert rows.scale_shift is not None, "int8 shard given rows without scales"
            self.scale_shift.index_copy_(0, at, rows.scale_shift.to(self.tensor.device))


def state_key(index: int) -> str:
    return f"embeddings.{internal_name(index)}.weight"

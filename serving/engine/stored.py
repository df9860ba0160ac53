"""A table's rows as stored (fp32, fp16 or FBGEMM's 8-bit row-wise int8), from float32 rows.

int8 is the format FBGEMM's inference kernel reads and TorchRec's quantized modules write
(`FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf`): a code per column plus an fp16 scale and
bias per row, taken from the whole row. Column shards keep the whole row's scale and bias
beside their codes, so a row dequantizes to the same floats wherever its shards live, and
equal to TorchRec's unsharded `QuantEmbeddingCollection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch
from fbgemm_gpu.split_embedding_configs import SparseType

from serving.config import Dtype, ModelSpec

SPARSE_TYPE = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8}
TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.uint8}
SCALE_SHIFT_BYTES = 4  # int8: an fp16 scale and an fp16 bias per row


@dataclass(frozen=True)
class Rows:
    """Rows in stored form: `data` [n, dim] of the stored dtype; for int8 also
    `scale_shift` [n, 4] (uint8 bytes of the two fp16 values)."""

    data: torch.Tensor
    scale_shift: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.data)


def encode(rows: torch.Tensor, dtype: Dtype) -> Rows:
    """float32 [n, dim] whole rows -> stored form (int8 needs whole rows: the scale is the
    row's)."""
    if dtype == "fp32":
        return Rows(rows)
    if dtype == "fp16":
        return Rows(rows.to(torch.float16))
    fused = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(rows.contiguous(), 8)
    return Rows(fused[:, :-SCALE_SHIFT_BYTES], fused[:, -SCALE_SHIFT_BYTES:])


def row_bytes(width: int, dtype: Dtype) -> int:
    """Bytes a row of `width` columns takes as stored (FBGEMM's alignment padding aside)."""
    if dtype == "int8":
        return width + SCALE_SHIFT_BYTES
    return width * TORCH_DTYPE[dtype].itemsize


def bytes_held(spec: ModelSpec, groups: Sequence[Sequence[int]]) -> list[dict[str, int]]:
    """What each group of ranks holds, per table, as stored, its shards of a table packed
    together: their columns of every row, plus one scale and bias per row for an int8 table."""
    plan = spec.plan()
    group_of = {r: i for i, g in enumerate(groups) for r in g}
    out: list[dict[str, int]] = [{} for _ in groups]
    for t in spec.tables:
        widths: dict[int, int] = {}
        for s in plan[t.name].shards:
            g = group_of[s.rank]
            widths[g] = widths.get(g, 0) + s.end - s.start
        for g, width in sorted(widths.items()):
            out[g][t.name] = t.num_embeddings * row_bytes(width, t.dtype)
    return out


def bytes_per_rank(spec: ModelSpec) -> dict[int, dict[str, int]]:
    """What each rank holds on its own, per table, as stored."""
    world = spec.sharding.world_size
    return dict(enumerate(bytes_held(spec, [[r] for r in range(world)])))

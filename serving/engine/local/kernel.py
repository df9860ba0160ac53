"""One FBGEMM inference table-batched kernel holding a pack's pieces of one width.

`IntNBitTableBatchedEmbeddingBagsCodegen` is the kernel TorchRec's inference path uses: each
piece in its stored dtype (FP32, FP16 or INT8 row-wise), float32 out. Its Python `forward`
costs ~17 us per call in bounds checks, cache bookkeeping and stats hooks that serving does
not need: ids are checked against the table size by the fronts, and there is no cache. So the
lookup calls FBGEMM's op directly with the module's own buffers: ~12 us for 20 ids instead of
~29 us. The op runs without the GIL, so kernels of different ranks can run on different cores.
"""

from __future__ import annotations

from typing import Any

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
    BoundsCheckMode,
    EmbeddingLocation,
    PoolingMode,
)
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)

from serving.engine.local.placement import KernelPlan
from serving.engine.model import LocalShard
from serving.engine.stored import SPARSE_TYPE, TORCH_DTYPE

# Every argument but the ids is a module buffer or setting of the same name (the weights
# aside), read once in schema order, so the call follows the op's schema in any FBGEMM version.
_OP = "int_nbit_split_embedding_codegen_lookup_function"


class Kernel:
    def __init__(self, plan: KernelPlan, device: torch.device):
        self.plan = plan
        self.device = device
        # Per slot, in lookup order: the batch key whose ids it takes, and where its rows go.
        self.slot_keys = [s.key_index for s in plan.slots]
        self.targets = [(s.key, s.copies) for s in plan.slots]
        location = EmbeddingLocation.HOST if device.type == "cpu" else EmbeddingLocation.DEVICE
        self.module = IntNBitTableBatchedEmbeddingBagsCodegen(
            [(p.name, p.rows, p.width, SPARSE_TYPE[p.dtype], location) for p in plan.pieces],
            feature_table_map=[s.piece for s in plan.slots],
            pooling_mode=PoolingMode.NONE,
            device=device,
            output_dtype=SparseType.FP32,
            bounds_check_mode=BoundsCheckMode.NONE,
        )
        self.module.initialize_weights()
        # Positional through the overload: ~14 us a call against ~19 us with keywords.
        self._op = getattr(torch.ops.fbgemm, _OP).default
        self._args = _fixed_args(self.module, self._op, device)
        names = [a.name for a in self._op._schema.arguments]
        self._at = names.index("indices"), names.index("offsets")

    def shards(self) -> list[LocalShard]:
        """Views of each piece's columns in the stored dtype (adjacent shards as one; for
        int8 also the rows' scale and bias, shared by a piece's shards): writing them loads
        a piece."""
        out = []
        weights = self.module.split_embedding_weights()
        for p, (w, scale_shift) in zip(self.plan.pieces, weights, strict=True):
            packed = w.view(TORCH_DTYPE[p.dtype])
            assert packed.shape == (p.rows, p.width), packed.shape
            for s0, s1, d0, d1 in p.copies():
                out.append(
                    LocalShard(p.table, (0, p.rows), (d0, d1), packed[:, s0:s1], scale_shift)
                )
        return out

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each table's piece in FBGEMM's buffers (codes, and scales for int8; the
        alignment padding of rows left out)."""
        return {
            p.table: w.numel() + (0 if scale_shift is None else scale_shift.numel())
            for p, (w, scale_shift) in zip(
                self.plan.pieces, self.module.split_embedding_weights(), strict=True
            )
        }

    def lookup(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """[len(indices), width] rows; `offsets` delimits the slots' ids, slot order."""
        args = list(self._args)
        args[self._at[0]], args[self._at[1]] = indices, offsets
        return self._op(*args)


def _fixed_args(
    module: IntNBitTableBatchedEmbeddingBagsCodegen, op: Any, device: torch.device
) -> list[Any]:
    """The op's arguments in schema order; `indices` and `offsets` left as None."""
    args: list[Any] = []
    for a in op._schema.arguments:
        name, value = a.name, None  # type: tuple[str, Any]
        if name in ("indices", "offsets", "indice_weights"):
            pass
        elif name == "lxu_cache_locations":
            # No cache: the op reads an empty location list, as the module passes it.
            value = torch.empty(0, dtype=torch.int32, device=device)
        elif name == "dev_weights":
            value = module.weights_host if module.host_size > 0 else module.weights_dev
        elif name == "uvm_weights":
            value = module.weights_uvm
        elif name == "pooling_mode":
            value = int(module.pooling_mode)
        elif hasattr(module, name):
            value = getattr(module, name)
        elif a.has_default_value():
            value = a.default_value
        else:
            raise RuntimeError(f"FBGEMM's {_OP} takes '{name}', which this engine cannot fill")
        args.append(value)
    return args

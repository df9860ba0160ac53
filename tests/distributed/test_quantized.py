"""fp16 and int8 tables: every placement answers the same rows, TorchRec's own quantized rows,
within the format's error of the float32 rows, in a quarter (int8) of the memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serving.config import ModelSpec, WeightsSpec
from serving.engine import stored, weights
from serving.engine.local.engine import LocalEngine
from serving.engine.model import served_tables
from serving.errors import EngineStartError
from tests.distributed.plans import PACKS, packed, requests, spec
from tests.reference import assert_exact

pytestmark = pytest.mark.slow

# One table of dim 32 placed every way: whole on one rank, column-wise in rank order, in
# reverse, with repeated ranks, interleaved over three ranks, and table-wise beside others.
PLACEMENTS: list[tuple[int, object]] = [
    (1, [0]),
    (2, [0, 1]),
    (2, [1, 0]),
    (2, [1, 0, 0, 1]),
    (3, [2, 0, 1, 1, 0, 2, 1, 0]),
    (3, 1),
]


def placed(world: int, where: object, dtype: str) -> ModelSpec:
    return spec(
        world,
        0,
        [
            ("items", 700, ["a", "b"], where, 32, dtype),
            ("other", 11, ["c"], 0, 8, "int8" if dtype == "fp16" else "fp16"),
        ],
        seed=3,
    )


@pytest.mark.parametrize("pack", PACKS)
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_every_placement_answers_the_same_rows_as_torchrecs_quantized_model(
    dtype: str, pack: str
) -> None:
    reqs = requests(placed(1, [0], dtype), 200, seed=11)
    seen: list[list[dict[str, np.ndarray]]] = []
    for world, where in PLACEMENTS:
        s = packed(placed(world, where, dtype), pack)
        with LocalEngine(s, device="cpu") as engine:
            answers = engine.forward(reqs)
        # The reference: TorchRec's QuantEmbeddingCollection made from the float32 rows.
        assert_exact(s, weights.full_tables(s), reqs, answers)
        seen.append([{k: v.copy() for k, v in a.items()} for a in answers])
    for placement, answers in zip(PLACEMENTS[1:], seen[1:], strict=True):
        for first, other in zip(seen[0], answers, strict=True):
            assert first.keys() == other.keys()
            for k in first:
                assert np.array_equal(first[k], other[k]), f"{placement}: feature {k} differs"


def answers_and_rows(
    dtype: str, rows: torch.Tensor, tmp_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of an `items` table loaded from float32 `rows` (dim 32, [1, 0, 0, 1])."""
    s = placed(2, [1, 0, 0, 1], dtype)
    path = tmp_path / "w.safetensors"
    save_file({"items": rows, "other": torch.zeros(11, 8)}, str(path))
    s = s.model_copy(update={"weights": WeightsSpec(safetensors=path)})
    with LocalEngine(s, device="cpu") as engine:
        (answer,) = engine.forward([{"a": np.arange(len(rows))}])
    return torch.from_numpy(answer["a"].copy()), rows


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_int8_rows_are_within_half_a_step_of_the_float32_rows(kind: str, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(700, 32, generator=gen)
    if kind == "uniform":
        rows = (torch.rand(700, 32, generator=gen) * 2 - 1) * 0.04
    got, rows = answers_and_rows("int8", rows, tmp_path)
    scale = stored.encode(rows, "int8").scale_shift.contiguous().view(torch.float16)[:, 0]  # type: ignore[union-attr]
    err = (got - rows).abs().amax(dim=1)
    step = scale.float()
    # Half a step, up to float32 rounding of code * scale + bias.
    assert (err <= step * 0.5 * (1 + 1e-3)).all(), (err / step).max()
    assert not torch.equal(got, rows)  # it really is quantized


def test_fp16_rows_are_the_float32_rows_rounded_to_half(tmp_path: Path) -> None:
    rows = torch.randn(700, 32, generator=torch.Generator().manual_seed(2))
    got, rows = answers_and_rows("fp16", rows, tmp_path)
    assert torch.equal(got, rows.half().float())


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_served_tables_are_the_rows_the_engine_answers(dtype: str) -> None:
    # What `seqserve bench` and the soak check answers against, for quantized tables too.
    s = placed(3, [2, 0, 1, 1, 0, 2, 1, 0], dtype)
    served = served_tables(s, weights.full_tables(s))
    with LocalEngine(s, device="cpu") as engine:
        (answer,) = engine.forward([{"a": np.arange(700), "c": np.arange(11)}])
    for feature, table in (("a", "items"), ("c", "other")):
        want = served[table].numpy()
        assert want.dtype == np.float32
        assert np.array_equal(answer[feature].view(np.uint32), want.view(np.uint32)), feature


@pytest.mark.parametrize(("dtype", "value"), [("int8", 1e5), ("fp16", -7e4), ("int8", np.nan)])
def test_weights_that_fp16_cannot_hold_are_refused_at_load(
    dtype: str, value: float, tmp_path: Path
) -> None:
    # An int8 row with a value beyond fp16's range would be served all NaN (its fp16 bias
    # overflows), an fp16 one inf: the load refuses them, naming the table and the row.
    rows = torch.zeros(700, 32)
    rows[123, 5] = value
    with pytest.raises(EngineStartError, match=r"table 'items': weights row 123 holds NaN, inf"):
        answers_and_rows(dtype, rows, tmp_path)


RESIDENT = """
import json, sys
from serving.config import parse_spec
from serving.engine.local.engine import LocalEngine

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

spec = parse_spec(json.loads(sys.argv[1]))
before = rss()
with LocalEngine(spec, device="cpu") as engine:
    print(json.dumps({"grown": rss() - before}))
"""


def resident_growth(dtype: str, rows: int, dim: int) -> int:
    raw = spec(2, 0, [("items", rows, ["a"], [0, 1, 0, 1], dim, dtype)]).model_dump(mode="json")
    out = subprocess.run(
        [sys.executable, "-c", RESIDENT, json.dumps(raw)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["grown"])


def table_growth(dtype: str, rows: int, dim: int) -> int:
    """What a table of `rows` adds over a table of 10 rows: the engine's own start-up memory
    (threads, kernels' first calls, load buffers) cancels out."""
    return resident_growth(dtype, rows, dim) - resident_growth(dtype, 10, dim)


def test_an_int8_tables_resident_memory_is_about_a_quarter_of_fp32() -> None:
    rows, dim = 1_000_000, 64  # 256 MB as float32
    fp32, fp16, int8 = (table_growth(d, rows, dim) for d in ("fp32", "fp16", "int8"))
    print(f"grown: fp32 {fp32 / 1e6:.0f} MB, fp16 {fp16 / 1e6:.0f} MB, int8 {int8 / 1e6:.0f} MB")
    table = rows * dim * 4
    assert 0.9 * table < fp32 < 1.25 * table, fp32 / table
    # int8: a byte per column plus 4 bytes of scale and bias per row (one packed table on a
    # CPU), (64 + 4) / 256
    assert 0.22 < int8 / fp32 < 0.36, int8 / fp32
    assert 0.45 < fp16 / fp32 < 0.6, fp16 / fp32


@pytest.mark.parametrize("pack", PACKS)
def test_the_bytes_models_reports_are_fbgemms_buffers(pack: str) -> None:
    s = spec(
        3,
        0,
        [
            ("items", 500, ["a"], [2, 0, 0, 1], 128, "int8"),
            ("tags", 40, ["t"], [1, 1, 0], 24, "fp16"),
            ("pos", 12, ["p"], 2, 8),
        ],
    )
    with LocalEngine(packed(s, pack), device="cpu") as engine:
        doc = engine.describe()
        held: list[dict[str, int]] = [{} for _ in doc["devices"]]
        for k in engine.kernels:
            held[k.plan.pack].update(k.table_bytes())
    assert held == [d["tables"] for d in doc["devices"]]
    assert sum(d["bytes"] for d in doc["devices"]) == sum(t["bytes"] for t in doc["tables"])
    if pack == "rank":
        assert held == list(stored.bytes_per_rank(s).values())
        assert held[0]["items"] == 500 * (64 + 4)  # two int8 shards of 32 packed, one scale each
    else:  # one CPU: every table whole, one scale and bias per row
        assert held == [{"items": 500 * (128 + 4), "tags": 40 * 24 * 2, "pos": 12 * 8 * 4}]

"""Weights from safetensors and from a DCP checkpoint of another plan serve the same rows."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving.commands.demo import write_model
from serving.config import ModelSpec, WeightsSpec, load_spec
from serving.engine import weights
from serving.engine.distributed.driver import DistributedEngine
from serving.errors import EngineStartError, SpecError
from tests.distributed.plans import ENGINES, engine_for, requests, spec
from tests.distributed.training_job import Modules, save_checkpoint, save_job_checkpoint
from tests.reference import assert_exact

pytestmark = pytest.mark.slow

SPEC = spec(
    2,
    16,
    [("products", 777, ["a", "b"], [1, 0, 0, 1]), ("cats", 13, ["c"], [0, 1, 1, 0])],
    seed=5,
)
RAW = SPEC.model_dump(mode="json", exclude_none=True)


def with_weights(s: ModelSpec, **w: Path) -> ModelSpec:
    return s.model_copy(update={"weights": WeightsSpec(**w)})


@pytest.fixture(scope="module")
def tables() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(42)
    return {
        t.name: torch.randn(t.num_embeddings, t.embedding_dim, generator=gen) for t in SPEC.tables
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tables: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("dcp") / "checkpoint"
    save_checkpoint(path, tables)
    return path


@pytest.mark.parametrize("kind", ENGINES)
def test_safetensors_serves_the_files_rows(
    kind: str, tmp_path: Path, tables: dict[str, torch.Tensor]
) -> None:
    save_file(tables, str(tmp_path / "w.safetensors"))
    s = with_weights(SPEC, safetensors=tmp_path / "w.safetensors")
    reqs = requests(s, 50, seed=7)
    with engine_for(kind, s) as engine:
        assert_exact(s, tables, reqs, engine.forward(reqs))


@pytest.mark.parametrize("kind", ENGINES)
def test_dcp_from_a_row_wise_training_plan_serves_the_same_rows(
    kind: str, checkpoint: Path, tables: dict[str, torch.Tensor]
) -> None:
    s = with_weights(SPEC, dcp=checkpoint)
    assert all(torch.equal(weights.full_tables(s)[n], t) for n, t in tables.items())
    reqs = requests(s, 50, seed=8)
    with engine_for(kind, s) as engine:
        assert_exact(s, tables, reqs, engine.forward(reqs))


def test_demo_model_writes_seeded_weights_equal_to_the_random_init(tmp_path: Path) -> None:
    path = write_model(tmp_path, RAW)
    loaded = load_spec(path)
    assert loaded.weights is not None and loaded.weights.safetensors is not None
    from_file = weights.full_tables(loaded)
    seeded = weights.full_tables(SPEC)
    assert all(torch.equal(from_file[n], seeded[n]) for n in seeded)


def test_wrong_shape_and_missing_table_are_clear_errors(
    tmp_path: Path, tables: dict[str, torch.Tensor], checkpoint: Path
) -> None:
    save_file(
        {"products": tables["products"][:, :8].contiguous(), "cats": tables["cats"]},
        str(tmp_path / "shape.safetensors"),
    )
    save_file({"products": tables["products"]}, str(tmp_path / "missing.safetensors"))
    cases = [
        (
            with_weights(SPEC, safetensors=tmp_path / "shape.safetensors"),
            "table 'products': tensor shape [777, 8] in shape.safetensors is not "
            "[num_embeddings, embedding_dim] = [777, 16]",
        ),
        (
            with_weights(SPEC, safetensors=tmp_path / "missing.safetensors"),
            "table 'cats': no tensor named 'cats' in missing.safetensors",
        ),
        (with_weights(SPEC, safetensors=tmp_path / "absent.safetensors"), "does not exist"),
        (
            with_weights(spec(2, 16, [("products", 778, ["a"], [1, 0, 0, 1])]), dcp=checkpoint),
            "table 'products': checkpoint tensor 'ec.embeddings.products.weight' has shape "
            "[777, 16], not [num_embeddings, embedding_dim] = [778, 16]",
        ),
        (
            with_weights(spec(2, 16, [("shops", 5, ["a"], [1, 0, 0, 1])]), dcp=checkpoint),
            "table 'shops': no key ending in 'embeddings.shops.weight' in checkpoint",
        ),
        (with_weights(SPEC, dcp=tmp_path), "is not a torch.distributed.checkpoint"),
    ]
    for s, message in cases:
        for kind in ENGINES:
            with pytest.raises(SpecError) as e:
                engine_for(kind, s).start()  # checked before any rank or kernel is built
            assert message in str(e.value)


def test_a_rank_that_fails_to_start_shows_its_traceback(tmp_path: Path, checkpoint: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data if f.name == ".metadata" else data[: len(data) // 3])
    with pytest.raises(EngineStartError) as e:
        DistributedEngine(with_weights(SPEC, dcp=broken), threads_per_rank=1).start()
    assert "start: rank" in str(e.value) and "Traceback (most recent call last)" in str(e.value)


# A training job's sparse arch: EmbeddingCollections of three dims (two of them using one table
# name), and an EmbeddingBagCollection whose `products` serving must not take.
JOB_DIMS = {
    "history": {"products": (997, 32), "brands": (50, 32)},
    "context": {"cats": (13, 16), "brands": (40, 16)},
    "position": {"pos": (20, 8)},
}
JOB_BAGS = {"products": (997, 32), "users": (30, 16)}

# What serving takes from it: tables of three dims, int8 and fp16 beside fp32.
SERVED = spec(
    2,
    0,
    [
        ("products", 997, ["item", "clicked"], [0, 1, 0, 1], 32, "int8"),
        ("cats", 13, ["cat"], [1, 0], 16, "fp16"),
        ("pos", 20, ["pos"], 1, 8),
    ],
)


@pytest.fixture(scope="module")
def job() -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(9)

    def rand(shape: tuple[int, int]) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.05

    modules: Modules = {m: ("ec", {n: rand(s) for n, s in t.items()}) for m, t in JOB_DIMS.items()}
    modules["user_bags"] = ("ebc", {n: rand(s) for n, s in JOB_BAGS.items()})
    path = Path(tempfile.mkdtemp(prefix="job-")) / "checkpoint"
    save_job_checkpoint(path, modules)
    served = {"products": "history", "cats": "context", "pos": "position"}
    return path, {n: modules[m][1][n] for n, m in served.items()}


def test_a_multi_collection_row_wise_training_checkpoint_serves_exactly(
    job: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, tables = job
    s = with_weights(SERVED, dcp=path)
    assert all(torch.equal(weights.full_tables(s)[n], t) for n, t in tables.items())
    reqs = requests(s, 200, seed=4)
    with engine_for("local", s) as engine:
        assert_exact(s, tables, reqs, engine.forward(reqs))
    # The distributed engine serves the tables of one dim from the same checkpoint.
    one_dim = with_weights(spec(2, 32, [("products", 997, ["item"], [1, 0, 0, 1])]), dcp=path)
    reqs = requests(one_dim, 50, seed=5)
    with engine_for("distributed", one_dim) as engine:
        assert_exact(one_dim, tables, reqs, engine.forward(reqs))


def test_a_name_in_two_collections_or_in_none_is_a_clear_error(
    job: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = job
    cases = [
        (
            spec(2, 32, [("brands", 50, ["b"], [0, 1])]),
            "table 'brands': 2 keys (context.embeddings.brands.weight, "
            "history.embeddings.brands.weight) ending in 'embeddings.brands.weight'",
        ),
        (
            spec(2, 16, [("users", 30, ["u"], [0, 1])]),
            "table 'users': no key ending in 'embeddings.users.weight'",
        ),
    ]
    for s, message in cases:
        with pytest.raises(SpecError) as e:
            engine_for("local", with_weights(s, dcp=path)).start()
        assert message in str(e.value)

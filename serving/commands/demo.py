"""The built-in demo model (docs/spec.md's example), a realistic one, and writing either
to disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file

from serving.config import ModelSpec, load_spec, parse_spec
from serving.engine import weights

DEMO: dict[str, Any] = {
    "name": "demo",
    "tables": [
        {
            "name": "items",
            "num_embeddings": 100_000,
            "embedding_dim": 64,
            "features": ["item_id", "clicked_item_id"],
        },
        {
            "name": "categories",
            "num_embeddings": 1000,
            "embedding_dim": 64,
            "features": ["category_id"],
        },
    ],
    "sharding": {
        "world_size": 2,
        "tables": {
            "items": {"column_wise": [0, 1, 0, 1]},
            "categories": {"column_wise": [1, 0, 1, 0]},
        },
    },
    "seed": 0,
}

# A sequential recommender's sparse arch as it is served: tables of 16 to 256 columns, the big
# ones stored in int8 and fp16, a small table-wise one beside the column-wise ones.
REALISTIC: dict[str, Any] = {
    "name": "realistic",
    "tables": [
        {
            "name": "items",
            "num_embeddings": 100_000,
            "embedding_dim": 128,
            "dtype": "int8",
            "features": ["item_id", "clicked_item_id"],
        },
        {
            "name": "tags",
            "num_embeddings": 10_000,
            "embedding_dim": 256,
            "dtype": "int8",
            "features": ["tag_id"],
        },
        {
            "name": "brands",
            "num_embeddings": 20_000,
            "embedding_dim": 64,
            "dtype": "fp16",
            "features": ["brand_id"],
        },
        {
            "name": "categories",
            "num_embeddings": 5_000,
            "embedding_dim": 32,
            "dtype": "fp16",
            "features": ["category_id"],
        },
        {"name": "positions", "num_embeddings": 512, "embedding_dim": 16, "features": ["position"]},
    ],
    "sharding": {
        "world_size": 2,
        "tables": {
            "items": {"column_wise": [0, 1, 0, 1]},
            "tags": {"column_wise": [1, 0]},
            "brands": {"column_wise": [1, 0, 1, 0]},
            "categories": {"column_wise": [0, 1]},
            "positions": {"table_wise": 1},
        },
    },
    "seed": 0,
}


def demo_spec(gpus: int = 0) -> ModelSpec:
    """The demo on 2 CPU ranks, or column-wise over every GPU when there are any."""
    if gpus <= 0:
        return parse_spec(DEMO, source="built-in demo")
    # 16 shards of width 4 fit any GPU count up to 16; deal them round-robin, the second
    # table in the opposite direction, so every GPU holds columns of both.
    world = min(gpus, 16)
    forward = [k % world for k in range(16)]
    raw = {
        **DEMO,
        "sharding": {
            "world_size": world,
            "tables": {
                "items": {"column_wise": forward},
                "categories": {"column_wise": [world - 1 - r for r in forward]},
            },
        },
    }
    return parse_spec(raw, source="built-in demo")


def write_model(directory: Path, raw: dict[str, Any] | None = None) -> Path:
    """Write DIR/model.yaml and DIR/weights.safetensors (the spec's seeded random rows)."""
    raw = dict(raw or DEMO)
    raw.pop("weights", None)
    spec = parse_spec(raw)
    directory.mkdir(parents=True, exist_ok=True)
    tables = {t.name: weights.random_table(spec, t).contiguous() for t in spec.tables}
    weights_path = directory / "weights.safetensors"
    save_file(tables, str(weights_path))
    # safetensors creates its files 0600; a container's user (docker/, deploy/) must read them.
    mask = os.umask(0)
    os.umask(mask)
    weights_path.chmod(0o666 & ~mask)
    raw["weights"] = {"safetensors": "weights.safetensors"}
    path = directory / "model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_spec(path)  # what we wrote must load
    return path

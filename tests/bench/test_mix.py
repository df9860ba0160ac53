"""The request mix: length and id distributions, subsets, seeds, encoded bodies."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from serving.bench.mix import IdDist, LengthDist, Mix, Pool
from serving.config import parse_spec
from tests.http.server import MODEL

SPEC = parse_spec(MODEL)


def mix(
    lengths: str = "lognormal:mean=20,sigma=1",
    ids: str = "uniform",
    subset: float = 0.25,
    seed: int = 0,
) -> Mix:
    return Mix.for_spec(SPEC, LengthDist.parse(lengths), IdDist.parse(ids), subset, seed)


def test_lognormal_lengths_stay_in_bounds_have_a_tail_and_the_mean_asked_for() -> None:
    d = LengthDist.parse("lognormal:mean=20,sigma=1,max=300")
    x = d.sample(np.random.default_rng(0), 50_000)
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() <= 300
    assert abs(x.mean() - 20) < 1.0
    assert np.percentile(x, 50) < 20 < np.percentile(x, 90)  # skewed right
    assert (x >= 100).mean() > 0.01  # p99 of this lognormal is about 6x its mean


def test_lengths_are_clipped_to_max() -> None:
    x = LengthDist.parse("lognormal:mean=20,sigma=1.5,max=40").sample(
        np.random.default_rng(1), 10_000
    )
    assert x.max() == 40 and (x == 40).mean() > 0.05 and x.min() == 0


def test_poisson_lengths() -> None:
    d = LengthDist.parse("poisson:mean=20")
    assert (d.kind, d.mean, d.max) == ("poisson", 20.0, 256)
    x = d.sample(np.random.default_rng(2), 20_000)
    assert x.min() >= 0 and abs(x.mean() - 20) < 0.5 and x.max() < 60  # no long tail
    assert (
        LengthDist.parse("poisson:mean=3,max=2").sample(np.random.default_rng(3), 1000).max() == 2
    )


@pytest.mark.parametrize(
    "text",
    ["gamma:mean=3", "lognormal", "lognormal:sigma=1", "poisson:mean=x", "poisson:mean=-1",
     "poisson:mean=5,max=2.5", "lognormal:mean=5,shape=2", ":mean=3"],
)  # fmt: skip
def test_bad_length_dists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--length-dist"):
        LengthDist.parse(text)


def test_id_dists() -> None:
    assert IdDist.parse("uniform") == IdDist("uniform")
    assert IdDist.parse("zipf:1.1") == IdDist.parse("zipf:s=1.1") == IdDist("zipf", 1.1)
    for bad in ("zipf", "zipf:0", "zipf:a", "uniform:2", "normal"):
        with pytest.raises(ValueError, match="--ids"):
            IdDist.parse(bad)


def test_ids_are_in_range_and_zipf_is_skewed() -> None:
    def share_of_top_rows(m: Mix) -> float:
        ids = np.concatenate([r["item_id"] for r in m.requests(2000) if "item_id" in r])
        assert ids.min() >= 0 and ids.max() < 5000
        counts = np.sort(np.bincount(ids, minlength=5000))[::-1]
        return counts[:50].sum() / counts.sum()  # the hottest 1% of rows

    assert share_of_top_rows(mix()) < 0.05
    assert share_of_top_rows(mix(ids="zipf:1.1")) > 0.3
    # the hot rows are scattered over the table, not rows 0, 1, 2, ...
    reqs = mix(ids="zipf:1.1").requests(500)
    hot = np.bincount(np.concatenate([r["item_id"] for r in reqs if "item_id" in r]))
    assert int(np.argmax(hot)) != 0


def test_requests_are_deterministic_for_a_seed() -> None:
    def flat(m: Mix) -> list[tuple[str, list[int]]]:
        return [(f, v.tolist()) for r in m.requests(200) for f, v in r.items()]

    assert flat(mix(ids="zipf:1.2", seed=7)) == flat(mix(ids="zipf:1.2", seed=7))
    assert flat(mix(seed=7)) != flat(mix(seed=8))


def test_most_requests_name_every_feature_and_some_a_subset() -> None:
    reqs = mix(subset=0.25).requests(4000)
    every = [set(r) == set(SPEC.features) for r in reqs]
    assert 0.7 < np.mean(every) < 0.8
    subsets = [r for r, e in zip(reqs, every, strict=True) if not e]
    assert all(0 < len(r) < len(SPEC.features) and set(r) <= set(SPEC.features) for r in subsets)
    assert all(set(r) == set(SPEC.features) for r in mix(subset=0).requests(200))
    with pytest.raises(ValueError, match="--subset"):
        mix(subset=1.5)


def test_the_pool_encodes_the_same_ids_in_both_formats() -> None:
    pool = Pool.build(mix(), 50, ["json", "msgpack"])
    for req, js, mp, n in zip(
        pool.requests, pool.bodies["json"], pool.bodies["msgpack"], pool.ids, strict=True
    ):
        want = {f: v.tolist() for f, v in req.items()}
        assert json.loads(js) == msgpack.unpackb(mp) == {"features": want}
        assert n == sum(len(v) for v in want.values())

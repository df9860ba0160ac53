"""The benchmark's request mix: long-tailed sequence lengths, uniform or Zipf ids, seeded.

    --length-dist lognormal:mean=20,sigma=1[,max=256]   (mean of the lengths, not of their log)
    --length-dist poisson:mean=20[,max=256]
    --ids uniform | zipf:1.1                            (P(rank k) ~ k^-s over a table's rows)

Lengths are rounded and clipped to [0, max]. Most requests name every feature of the model; a
fraction (`subset`) name a random non-empty proper subset. Zipf ranks map to rows through a
seeded permutation per table, so the hot rows are scattered over the table as in real traffic,
and features that share a table share its hot rows. Pure numpy (no torch): the locustfile
uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np
import orjson

from serving.config import ModelSpec
from serving.engine.base import Ids

# The native body formats, with the headers that send one and ask for the answer in the same
# format (POST /predictions/{model}).
HEADERS = {
    "json": {"Content-Type": "application/json"},
    "msgpack": {"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
}
# Every format the bench sends: the native ones, then the Open Inference Protocol v2 over REST
# with binary tensors and over gRPC (serving.bench.v2).
V2_FORMATS = ("v2-binary", "v2-grpc")
FORMATS = (*HEADERS, *V2_FORMATS)
DEFAULT_MAX_LENGTH = 256


def _params(text: str, what: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = text.partition(":")
    params: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = "", key  # a bare value: zipf:1.1
        params[key.strip()] = value.strip()
    if not kind.strip():
        raise ValueError(f"{what} {text!r}: no distribution name")
    return kind.strip().lower(), params


def _number(params: dict[str, str], key: str, what: str, default: float | None = None) -> float:
    raw = params.pop(key, None)
    if raw is None:
        if default is None:
            raise ValueError(f"{what}: '{key}=' is required")
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{what}: {key}={raw!r} is not a number") from None


@dataclass(frozen=True)
class LengthDist:
    kind: str  # "lognormal" or "poisson"
    mean: float
    sigma: float = 1.0
    max: int = DEFAULT_MAX_LENGTH

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        what = f"--length-dist {text!r}"
        kind, params = _params(text, what)
        if kind not in ("lognormal", "poisson"):
            raise ValueError(f"{what}: use lognormal:mean=M,sigma=S or poisson:mean=M")
        mean = _number(params, "mean", what)
        sigma = _number(params, "sigma", what, 1.0) if kind == "lognormal" else 0.0
        top = _number(params, "max", what, DEFAULT_MAX_LENGTH)
        if params:
            raise ValueError(f"{what}: unknown parameters {sorted(params)}")
        if not (mean > 0 and sigma >= 0 and 0 <= top <= 1 << 30 and top == int(top)):
            raise ValueError(f"{what}: need mean > 0, sigma >= 0 and an integer max >= 0")
        return cls(kind, mean, sigma, int(top))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "poisson":
            x = rng.poisson(self.mean, size).astype(np.float64)
        else:  # exp(N(mu, sigma)) has mean exp(mu + sigma^2 / 2)
            mu = math.log(self.mean) - self.sigma**2 / 2
            x = np.rint(rng.lognormal(mu, self.sigma, size))
        return np.clip(x, 0, self.max).astype(np.int64)

    def __str__(self) -> str:
        sigma = f",sigma={self.sigma:g}" if self.kind == "lognormal" else ""
        return f"{self.kind}:mean={self.mean:g}{sigma},max={self.max}"


@dataclass(frozen=True)
class IdDist:
    kind: str  # "uniform" or "zipf"
    s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> IdDist:
        what = f"--ids {text!r}"
        kind, params = _params(text, what)
        if kind == "uniform" and not params:
            return cls("uniform")
        if kind == "zipf":
            bare = params.pop("", None)
            s = _number({"s": params.pop("s", bare or "")}, "s", what)
            if params or not s > 0:
                raise ValueError(f"{what}: use zipf:S with an exponent S > 0")
            return cls("zipf", s)
        raise ValueError(f"{what}: use uniform or zipf:S (e.g. zipf:1.1)")

    def __str__(self) -> str:
        return "uniform" if self.kind == "uniform" else f"zipf:{self.s:g}"


@dataclass
class Mix:
    rows: dict[str, int]  # feature -> rows of its table
    tables: dict[str, str]  # feature -> table name
    lengths: LengthDist
    ids: IdDist
    subset: float = 0.25  # fraction of requests naming a strict subset of the features
    seed: int = 0
    _zipf: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_spec(
        cls, spec: ModelSpec, lengths: LengthDist, ids: IdDist, subset: float = 0.25, seed: int = 0
    ) -> Mix:
        if not 0 <= subset <= 1:
            raise ValueError(f"--subset {subset}: must be in [0, 1]")
        by_feature = spec.table_of()
        rows = {f: by_feature[f].num_embeddings for f in spec.features}
        return cls(rows, {f: by_feature[f].name for f in rows}, lengths, ids, subset, seed)

    def _draw_ids(self, rng: np.random.Generator, feature: str, k: int) -> np.ndarray:
        n = self.rows[feature]
        if self.ids.kind == "uniform":
            return rng.integers(0, n, size=k, dtype=np.int64)
        table = self.tables[feature]
        if table not in self._zipf:
            weights = np.arange(1, n + 1, dtype=np.float64) ** -self.ids.s
            cdf = np.cumsum(weights)
            cdf /= cdf[-1]
            perm = np.random.default_rng([self.seed, n, len(table)]).permutation(n)
            self._zipf[table] = (cdf, perm.astype(np.int64))
        cdf, perm = self._zipf[table]
        ranks = np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), n - 1)
        return perm[ranks]

    def requests(self, count: int) -> list[Ids]:
        """`count` requests, the same ones for the same seed."""
        rng = np.random.default_rng(self.seed)
        features = list(self.rows)
        out: list[Ids] = []
        for _ in range(count):
            chosen = features
            if len(features) > 1 and rng.random() < self.subset:
                k = int(rng.integers(1, len(features)))
                picked = set(rng.choice(len(features), size=k, replace=False).tolist())
                chosen = [f for i, f in enumerate(features) if i in picked]
            lens = self.lengths.sample(rng, len(chosen))
            pairs = zip(chosen, lens.tolist(), strict=True)
            out.append({f: self._draw_ids(rng, f, n) for f, n in pairs})
        return out


def encode(request: Ids, fmt: str, model: str = "") -> bytes:
    """One single-sequence body in `fmt`: `{"features": ...}` as json or msgpack, or the same
    ids as a v2 REST body with binary tensors (v2-binary) or a serialized ModelInferRequest for
    `model` (v2-grpc)."""
    return encode_with_headers(request, fmt, model)[0]


def encode_with_headers(request: Ids, fmt: str, model: str = "") -> tuple[bytes, dict[str, str]]:
    """The body (encode) and the headers it needs beyond its format's: a v2 REST body's
    Inference-Header-Content-Length, the length of its JSON header."""
    if fmt in V2_FORMATS:
        from serving.bench import v2

        if fmt == v2.REST:
            body, head = v2.rest_body(request)
            return body, {v2.HEADER_LENGTH: str(head)}
        if not model:
            raise ValueError("a v2-grpc body names its model: give `model`")
        return v2.grpc_body(request, model), {}
    doc = {"features": {f: ids.tolist() for f, ids in request.items()}}
    if fmt == "json":
        return orjson.dumps(doc), {}
    if fmt == "msgpack":
        return bytes(msgpack.packb(doc)), {}
    raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Pool:
    """Requests with their bodies pre-encoded, so the client loop only sends bytes."""

    requests: list[Ids]
    bodies: dict[str, list[bytes]]  # format -> one body per request
    ids: list[int]  # ids per request
    # format -> each body's own headers (encode_with_headers), for the formats that have some
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def build(cls, mix: Mix, size: int, formats: Sequence[str], model: str = "") -> Pool:
        """`size` requests of `mix` encoded in each format; `model` names the model in the
        formats whose body does (v2-grpc)."""
        reqs = mix.requests(size)
        bodies: dict[str, list[bytes]] = {}
        headers: dict[str, list[dict[str, str]]] = {}
        for fmt in formats:
            pairs = [encode_with_headers(r, fmt, model) for r in reqs]
            bodies[fmt] = [body for body, _ in pairs]
            if any(h for _, h in pairs):
                headers[fmt] = [h for _, h in pairs]
        return cls(reqs, bodies, [sum(len(v) for v in r.values()) for r in reqs], headers)

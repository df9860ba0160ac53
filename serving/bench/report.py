"""A run's results: the level metrics, results.json, the markdown table and plot.png."""

from __future__ import annotations

import collections
import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# The project's target for the FastAPI front against the HTTP ceiling (serving.bench.ceiling).
TARGET: dict[str, Any] = {
    "what": "FastAPI msgpack req/s over the ceiling's msgpack req/s at 32 clients",
    "front": "fastapi",
    "format": "msgpack",
    "concurrency": 32,
    "min_ratio": 0.25,
}
# The Open Inference Protocol's target: each v2 format against native msgpack on one front.
V2_TARGET: dict[str, Any] = {
    "what": "v2 REST binary and v2 gRPC req/s over native msgpack req/s, same front, at 32 clients",
    "formats": ["v2-binary", "v2-grpc"],
    "baseline": "msgpack",
    "concurrency": 32,
    "min_ratio": 0.8,
}
PACKAGES = (
    "torch", "torchrec", "fbgemm-gpu-cpu", "numpy", "fastapi", "uvicorn", "httpx", "msgpack",
    "orjson", "torchserve", "matplotlib", "grpcio", "protobuf",
)  # fmt: skip


def level_metrics(
    results: Sequence[tuple[float, float, int | str, int]],
    ids_per_body: Sequence[int],
    start: float,
    duration: float,
) -> dict[str, Any]:
    """Requests that started inside [start, start + duration): rates, latency, errors."""
    measured = [r for r in results if r[0] >= start]
    ok = np.array([r[1] for r in measured if r[2] == 200]) * 1000

    def pct(q: float) -> float | None:
        return float(np.percentile(ok, q)) if len(ok) else None

    errors = collections.Counter(str(r[2]) for r in measured if r[2] != 200)
    return {
        "requests": len(measured),
        "ok": len(ok),
        "req_s": len(ok) / duration,
        "ids_s": sum(ids_per_body[r[3]] for r in measured if r[2] == 200) / duration,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "errors": dict(sorted(errors.items())),
    }


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def rate(v: float) -> str:
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if v >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _kind(kind: str, count: int) -> str:
    """A process kind, with its count where there are several: front x4."""
    return kind if count < 2 else f"{kind} x{count}"


def _cpu(r: dict[str, Any]) -> str:
    """Server CPU ms per request, total and by process kind, each kind summed over its
    processes ('-' for a server not started by the bench); the client's after a slash."""
    server = r.get("server_cpu_ms_per_req")
    client = r.get("client_cpu_ms_per_req")
    counts = r.get("server_processes") or {}
    text = "-"
    if server:
        parts = ", ".join(
            f"{_kind(k, counts.get(k, 1))} {v:.2f}"
            for k, v in server.items()
            if k != "total" and v >= 0.005
        )
        text = f"{server['total']:.2f} ({parts})"
    return text if client is None else f"{text} / {client:.2f}"


def resident(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Resident memory of each started server at its last level, by process kind: the largest
    of a kind's processes (the max front of --workers N), with their count where there are
    several; no lines where no row has it."""
    last = {r["front"]: r for r in rows if r.get("server_rss")}
    if not last:
        return []
    lines = [
        "| front | at | resident MiB by process kind (the largest of each kind) |",
        "| --- | --- | --- |",
    ]
    for front, r in last.items():
        sizes: dict[str, list[float]] = {}
        for p in r["server_rss"]:
            sizes.setdefault(p["kind"], []).append(p["rss_mb"])
        cells = ", ".join(f"{_kind(k, len(v))} {max(v):.0f}" for k, v in sizes.items())
        lines.append(f"| {front} | {r['format']} x{r['concurrency']} | {cells} |")
    return lines


def over_ceiling(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each front's req/s over the HTTP ceiling's at every level and format both ran, and
    TARGET with its ratio (None, and `met` None, where its level did not run)."""
    by = {(r["front"], r["format"], r["concurrency"]): r for r in rows}
    out = []
    for (front, fmt, n), row in by.items():
        top = by.get(("ceiling", fmt, n))
        if front != "ceiling" and top is not None and top["req_s"] > 0:
            out.append(
                {
                    "front": front,
                    "format": fmt,
                    "concurrency": n,
                    "req_s_ratio": row["req_s"] / top["req_s"],
                    **{
                        k: {front: row[k], "ceiling": top[k]} for k in ("req_s", "p50_ms", "p99_ms")
                    },
                }
            )
    at = ("front", "format", "concurrency")
    ratio = next((c["req_s_ratio"] for c in out if all(c[k] == TARGET[k] for k in at)), None)
    met = None if ratio is None else ratio >= TARGET["min_ratio"]
    return out, {**TARGET, "ratio": ratio, "met": met}


def over_msgpack(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each v2 format's req/s over native msgpack's on the same front at every level both ran,
    flagged against V2_TARGET at its level; and V2_TARGET with each front and format's ratio
    there, `met` when all of them are (None where its level did not run)."""
    by = {(r["front"], r["format"], r["concurrency"]): r for r in rows}
    base, at = V2_TARGET["baseline"], V2_TARGET["concurrency"]
    out = []
    for (front, fmt, n), row in by.items():
        ref = by.get((front, base, n))
        if fmt not in V2_TARGET["formats"] or ref is None or ref["req_s"] <= 0:
            continue
        ratio = row["req_s"] / ref["req_s"]
        out.append(
            {
                "front": front,
                "format": fmt,
                "concurrency": n,
                "req_s_ratio": ratio,
                **{k: {fmt: row[k], base: ref[k]} for k in ("req_s", "p50_ms", "p99_ms")},
                "target": n == at,
                "met": ratio >= V2_TARGET["min_ratio"] if n == at else None,
            }
        )
    results = [
        {"front": c["front"], "format": c["format"], "ratio": c["req_s_ratio"], "met": c["met"]}
        for c in out
        if c["target"]
    ]
    met = all(x["met"] for x in results) if results else None
    return out, {**V2_TARGET, "results": results, "met": met}


def comparisons(
    rows: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The ratios a reader compares: FastAPI over TorchServe at each level both ran, each front
    over the HTTP ceiling (over_ceiling), each v2 format over native msgpack (over_msgpack),
    and each front's best ids/s over one core's gather rate (index_select)."""
    by = {(r["front"], r["format"], r["concurrency"]): r for r in rows}
    fronts = []
    for (front, fmt, n), fast in by.items():
        slow = by.get(("torchserve", fmt, n))
        if front == "fastapi" and slow is not None and slow["req_s"] > 0:
            fronts.append(
                {
                    "format": fmt,
                    "concurrency": n,
                    "req_s_ratio": fast["req_s"] / slow["req_s"],
                    "p99_ms": {"fastapi": fast["p99_ms"], "torchserve": slow["p99_ms"]},
                }
            )
    ceiling, target = over_ceiling(rows)
    v2, v2_target = over_msgpack(rows)
    gather = next((x["ids_s"] for x in references if x["name"].startswith("index_select")), None)
    to_gather = []
    if gather:
        best: dict[tuple[str, str], float] = {}
        for r in rows:
            if r["front"] != "ceiling":  # its answer holds no rows of the ids it was sent
                pair = (r["front"], r["format"])
                best[pair] = max(best.get(pair, 0.0), r["ids_s"])
        to_gather = [
            {"front": f, "format": fmt, "best_ids_s": v, "ratio": v / gather}
            for (f, fmt), v in best.items()
        ]
    return {
        "fastapi_over_torchserve": fronts,
        "over_ceiling": ceiling,
        "ceiling_target": target,
        "v2_over_msgpack": v2,
        "v2_target": v2_target,
        "ids_s_over_gather": to_gather,
    }


def by_format(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The formats side by side: a line per front and level, req/s (p50 / p99 ms) per format
    ('-' where the format did not run there); no lines for a run of one format."""
    formats = list(dict.fromkeys(r["format"] for r in rows))
    if len(formats) < 2:
        return []
    cells: dict[tuple[str, int], dict[str, str]] = {}
    for r in rows:
        cell = f"{r['req_s']:.1f} ({_ms(r['p50_ms'])} / {_ms(r['p99_ms'])})"
        cells.setdefault((r["front"], r["concurrency"]), {})[r["format"]] = cell
    lines = [
        "| front | clients | " + " | ".join(f"{f}: req/s (p50 / p99 ms)" for f in formats) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in formats) + " |",
    ]
    for (front, n), got in cells.items():
        lines.append(f"| {front} | {n} | " + " | ".join(got.get(f, "-") for f in formats) + " |")
    return lines


def table(rows: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]) -> str:
    """The markdown tables: every row (format by format, then by level, the fronts in the
    order they ran), the formats side by side, the references and the comparisons."""
    lines = [
        "| front | format | clients | req/s | ids/s | p50 ms | p90 ms | p99 ms | errors "
        "| checked | wrong | CPU ms/req: server (by process kind) / client |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    order = {f: k for k, f in enumerate(dict.fromkeys(r["format"] for r in rows))}
    for r in sorted(rows, key=lambda r: (order[r["format"]], r["concurrency"])):
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['front']} | {r['format']} | {r['concurrency']} | {r['req_s']:.1f} "
            f"| {rate(r['ids_s'])} | {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} "
            f"| {_ms(r['p99_ms'])} | {errors} | {r['checked']} | {r['wrong']} | {_cpu(r)} |"
        )
    if references:
        lines += ["", "| reference | ids/s | what |", "| --- | ---: | --- |"]
        lines += [f"| {x['name']} | {rate(x['ids_s'])} | {x['what']} |" for x in references]
    ratios = comparisons(rows, references)
    if memory := resident(rows):
        lines += ["", *memory]
    if side := by_format(rows):
        lines += ["", *side]
    if ratios["v2_over_msgpack"]:
        lines += [
            "",
            "| front | format | clients | req/s over msgpack's | req/s, msgpack "
            "| p99 ms, msgpack |",
            "| --- | --- | ---: | ---: | --- | --- |",
        ]
        for c in ratios["v2_over_msgpack"]:
            f, req_s, p99 = c["format"], c["req_s"], c["p99_ms"]
            flag = {None: "", True: " (met)", False: " (not met)"}[c["met"]]
            lines.append(
                f"| {c['front']} | {f} | {c['concurrency']} | {c['req_s_ratio']:.2f}x{flag} "
                f"| {req_s[f]:.1f}, {req_s['msgpack']:.1f} | {_ms(p99[f])}, {_ms(p99['msgpack'])} |"
            )
        t = ratios["v2_target"]
        got = ", ".join(
            f"{x['front']} {x['format']} {x['ratio']:.2f}x"
            + (" (met)" if x["met"] else " (not met)")
            for x in t["results"]
        )
        lines += ["", f"Target: {t['what']} >= {t['min_ratio']:g}x: {got or 'not measured'}"]
    if ratios["fastapi_over_torchserve"]:
        lines += [
            "",
            "| format | clients | FastAPI / TorchServe req/s | p99 ms FastAPI, TorchServe |",
        ]
        lines += ["| --- | ---: | ---: | --- |"]
        for c in ratios["fastapi_over_torchserve"]:
            p99 = c["p99_ms"]
            lines.append(
                f"| {c['format']} | {c['concurrency']} | {c['req_s_ratio']:.2f}x "
                f"| {_ms(p99['fastapi'])}, {_ms(p99['torchserve'])} |"
            )
    if ratios["over_ceiling"]:
        lines += [
            "",
            "| front | format | clients | req/s over the ceiling's | req/s, ceiling "
            "| p99 ms, ceiling |",
            "| --- | --- | ---: | ---: | --- | --- |",
        ]
        for c in ratios["over_ceiling"]:
            f, req_s, p99 = c["front"], c["req_s"], c["p99_ms"]
            lines.append(
                f"| {f} | {c['format']} | {c['concurrency']} | {c['req_s_ratio']:.3f}x "
                f"| {req_s[f]:.1f}, {req_s['ceiling']:.1f} | {_ms(p99[f])}, {_ms(p99['ceiling'])} |"
            )
        t = ratios["ceiling_target"]
        got = "not measured" if t["ratio"] is None else f"{t['ratio']:.3f}x"
        met = {None: "", True: " (met)", False: " (not met)"}[t["met"]]
        lines += ["", f"Target: {t['what']} >= {t['min_ratio']:g}x: {got}{met}"]
    if ratios["ids_s_over_gather"]:
        lines += ["", "| front | format | best ids/s | over index_select, 1 core |"]
        lines += ["| --- | --- | ---: | ---: |"]
        for g in ratios["ids_s_over_gather"]:
            lines.append(
                f"| {g['front']} | {g['format']} | {rate(g['best_ids_s'])} | {g['ratio']:.4f}x |"
            )
    return "\n".join(lines)


def write_json(out: Path, doc: dict[str, Any]) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def plot(out: Path, rows: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]) -> Path:
    """plot.png: req/s against p99 per front and format (a line through its concurrency
    levels; the HTTP ceiling dashed), beside a bar chart of ids/s: the reference lines and each
    front's best level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        lines[f"{r['front']} {r['format']}"].append(r)
    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]}, layout="constrained"
    )
    for label, rs in lines.items():
        pts = sorted((r for r in rs if r["p99_ms"] is not None), key=lambda r: r["concurrency"])
        if not pts:
            continue
        xs, ys = [r["req_s"] for r in pts], [r["p99_ms"] for r in pts]
        ax.plot(
            xs, ys, marker="o", label=label, linestyle="--" if rs[0]["front"] == "ceiling" else "-"
        )
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(
                f"{r['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("throughput against p99 (points labelled with clients)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend()

    names = [x["name"] for x in references]
    values = [x["ids_s"] for x in references]
    for label, rs in lines.items():
        if rs[0]["front"] == "ceiling":
            continue  # its ids/s counts ids it was sent, not rows it looked up
        names.append(f"{label} (best)")
        values.append(max(r["ids_s"] for r in rs))
    y = np.arange(len(names))
    colors = ["tab:gray"] * len(references) + ["tab:blue"] * (len(names) - len(references))
    bars.barh(y, [max(v, 1.0) for v in values], color=colors)
    bars.set_yticks(y, names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xscale("log")
    bars.set_xlabel("ids/s (log)")
    bars.set_title("ids/s: in-process references (gray), served (blue)")
    for k, v in enumerate(values):
        bars.text(max(v, 1.0), k, f" {rate(v)}", va="center", fontsize=8)
    low = min([*values, 1e12])
    bars.set_xlim(
        left=10 ** np.floor(np.log10(max(low, 10.0)) - 1), right=max([*values, 10.0]) * 30
    )
    path = out / "plot.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

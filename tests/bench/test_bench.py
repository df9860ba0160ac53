"""`seqserve bench` end to end: against a real server, and against one that answers wrong."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bench import HEADERS
from serving.bench.ceiling import typical_answers
from serving.bench.check import check_single, feature_bits
from serving.bench.mix import IdDist, LengthDist, Mix, Pool
from serving.config import load_spec
from serving.engine.weights import full_tables
from serving.fronts.codec import encode
from tests.http.server import ROOT, Server

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def bench(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.commands.cli", "bench", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ceilings() -> set[int]:
    """Pids of the HTTP ceiling processes running now."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and b"serving.bench.ceiling" in (entry / "cmdline").read_bytes()
            ):
                pids.add(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return pids - {os.getpid()}


def test_a_short_run_against_a_real_server(
    server: Server, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    before = ceilings()
    run = bench(
        "--url", server.url, "--grpc-url", server.grpc_url, "--model", str(model_path),
        "--model-name", "small", "--concurrency", "1,2", "--duration", "1", "--warmup", "0.5",
        "--formats", "json,msgpack,v2-binary,v2-grpc", "--reference-duration", "0.2",
        "--ceiling", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert ceilings() <= before  # the bench stopped its ceiling
    doc = json.loads((out / "results.json").read_text())
    assert {"command", "environment", "references", "results", "checked", "wrong"} <= set(doc)
    assert doc["command"].startswith("seqserve bench --url")
    env = doc["environment"]
    assert env["cpu_count"] > 0 and env["versions"]["torch"] and env["versions"]["matplotlib"]
    assert [x["name"] for x in doc["references"]] == [
        "unsharded EmbeddingCollection, 1 thread",
        "local engine, 2 ranks",
        "index_select, 1 core",
    ]
    assert all(x["ids_s"] > 0 for x in doc["references"])
    rows = doc["results"]
    assert [(r["front"], r["format"], r["concurrency"]) for r in rows] == [
        (front, fmt, n)
        for n in (1, 2)
        for fmt in ("json", "msgpack", "v2-binary", "v2-grpc")
        for front in (("url", "ceiling") if fmt in HEADERS else ("url",))
    ]  # formats back to back at each level, the ceiling right after the server; it stands
    # for the native route only
    for r in rows:
        assert r["req_s"] > 0 and r["ids_s"] > 0 and r["ok"] > 0 and r["errors"] == {}
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["wrong"] == 0 and (r["checked"] > 0) == (r["front"] == "url")
        assert (r["server_cpu_ms_per_req"] is None) == (r["front"] == "url")  # started here
    assert doc["wrong"] == 0 and doc["checked"] == sum(r["checked"] for r in rows)
    assert doc["settings"]["ceiling"] is True
    assert doc["target"]["grpc_url"] == server.grpc_url
    assert doc["settings"]["grpc_channels"] == "client"
    # the v2 formats: every answer of the warm-up and a sample after checked, none wrong
    for fmt in ("v2-binary", "v2-grpc"):
        assert all(r["checked"] > 0 and r["wrong"] == 0 for r in rows if r["format"] == fmt)
    v2 = doc["comparisons"]["v2_over_msgpack"]
    assert [(c["front"], c["format"], c["concurrency"]) for c in v2] == [
        ("url", fmt, n) for n in (1, 2) for fmt in ("v2-binary", "v2-grpc")
    ]
    for c in v2:
        assert c["req_s_ratio"] == c["req_s"][c["format"]] / c["req_s"]["msgpack"] > 0
        assert c["target"] is False and c["met"] is None  # the target is at 32 clients
    v2_target = doc["comparisons"]["v2_target"]
    assert (v2_target["concurrency"], v2_target["min_ratio"]) == (32, 0.8)
    assert v2_target["results"] == [] and v2_target["met"] is None
    about = doc["ceiling"]
    assert {"what", "request", "ids", "answer_bytes"} <= set(about) and about["ids"] > 0
    assert about["answer_bytes"]["json"] > about["answer_bytes"]["msgpack"] > 0
    over = doc["comparisons"]["over_ceiling"]
    assert [(c["front"], c["format"], c["concurrency"]) for c in over] == [
        ("url", fmt, n) for n in (1, 2) for fmt in ("json", "msgpack")
    ]
    for c in over:
        assert c["req_s_ratio"] == c["req_s"]["url"] / c["req_s"]["ceiling"] > 0
        assert set(c["p50_ms"]) == set(c["p99_ms"]) == {"url", "ceiling"}
    target = doc["comparisons"]["ceiling_target"]
    assert (target["front"], target["format"], target["concurrency"]) == ("fastapi", "msgpack", 32)
    assert target["min_ratio"] == 0.25 and target["ratio"] is None and target["met"] is None
    png = (out / "plot.png").read_bytes()
    assert png[:8] == PNG and png[12:16] == b"IHDR" and len(png) > 20_000
    width, height = struct.unpack(">II", png[16:24])
    assert width > 800 and height > 400
    assert "| front | format | clients | req/s |" in run.stdout
    assert "| url | msgpack | 2 | " in run.stdout and "| ceiling | msgpack | 2 | " in run.stdout
    assert "| front | format | clients | req/s over the ceiling's |" in run.stdout
    assert "Target: FastAPI msgpack req/s over the ceiling's msgpack req/s at 32 clients" in (
        run.stdout
    )
    assert "index_select, 1 core" in run.stdout
    assert "| front | clients | json: req/s (p50 / p99 ms) |" in run.stdout
    assert (
        "| url | v2-grpc | 2 | " in run.stdout
        and "| front | format | clients | req/s over msgpack's |" in run.stdout
    )
    assert "[bench] url json x2" in run.stderr  # progress lines
    assert "[bench] url v2-grpc x2" in run.stderr
    assert "[bench] ceiling msgpack x2" in run.stderr


def test_the_ceilings_answer_is_the_servers(server: Server, model_path: Path) -> None:
    """Same bytes and content type as seqserve's own answer to the request it stands for."""
    spec = load_spec(model_path)
    mix = Mix.for_spec(spec, LengthDist.parse("lognormal:mean=20,sigma=1"), IdDist.parse("uniform"))
    pool = Pool.build(mix, 64, ["json", "msgpack"])
    answers, about = typical_answers(
        pool, feature_bits(spec, full_tables(spec)), ["json", "msgpack"]
    )
    floats = [sum(len(v) for v in r.values()) for r in pool.requests]  # one dim: 16
    assert abs(floats[about["request"]] - np.mean(floats)) <= min(
        abs(x - np.mean(floats)) for x in floats
    )
    for fmt, answer in answers.items():
        body = pool.bodies[fmt][about["request"]]
        r = server.client.post("/predictions/small", content=body, headers=HEADERS[fmt])
        assert r.status_code == 200 and r.content == answer
        assert r.headers["content-type"] == HEADERS[fmt].get("Accept", "application/json")


class FakeServer(BaseHTTPRequestHandler):
    """A healthy /ping and JSON answers; subclasses say what a prediction gets."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the bench client expects

    def do_GET(self) -> None:
        self.answer(b'{"status": "Healthy"}')

    def answer(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class NoModelHandler(FakeServer):
    """Healthy, but with no model to answer: 404 to every prediction."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(b'{"code": 404}', 404)


def test_a_failed_run_stops_its_ceiling(model_path: Path, tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NoModelHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    before = ceilings()
    try:
        run = bench(
            "--url", f"http://127.0.0.1:{httpd.server_address[1]}", "--model", str(model_path),
            "--model-name", "small", "--reference-duration", "0", "--ceiling",
            "--out", str(tmp_path),
        )  # fmt: skip
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert run.returncode == 2, run.stderr[-3000:]
    assert "no 200" in run.stderr and "starting the HTTP ceiling" in run.stderr
    assert ceilings() <= before


class ZerosHandler(FakeServer):
    """The contract's JSON shape with every row zero: well formed, and wrong."""

    def do_POST(self) -> None:
        features = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["features"]
        rows = {f: [[0.0] * 16 for _ in ids] for f, ids in features.items()}
        self.answer(json.dumps({"embeddings": rows}).encode())


@pytest.fixture
def zeros_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ZerosHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_wrong_answers_fail_the_run(zeros_server: str, model_path: Path, tmp_path: Path) -> None:
    run = bench(
        "--url", zeros_server, "--model", str(model_path), "--model-name", "small",
        "--concurrency", "1", "--duration", "0.5", "--warmup", "0.2", "--formats", "json",
        "--reference-duration", "0", "--out", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["wrong"] > 0 and doc["results"][0]["wrong"] > 0
    assert doc["results"][0]["errors"] == {}  # all 200s: wrong, not errors
    assert any("rows differ from the table" in x for x in doc["wrong_examples"])
    assert "FAIL" in run.stderr and (tmp_path / "plot.png").read_bytes()[:8] == PNG


def test_the_checker_takes_exact_answers_and_refuses_a_flipped_bit(model_path: Path) -> None:
    spec = load_spec(model_path)
    bits = feature_bits(spec, full_tables(spec))
    want = {"item_id": np.array([3, 3, 4999]), "shop_id": np.array([], dtype=np.int64)}
    rows = {f: bits[f][ids].view(np.float32) for f, ids in want.items()}
    for accept, fmt in ((None, "json"), ("application/msgpack", "msgpack")):
        body, _ = encode([rows], False, accept)
        assert check_single(body, fmt, want, bits) == ""
    flipped = {f: a.copy() for f, a in rows.items()}
    flipped["item_id"].view(np.uint32)[1, 5] ^= 1  # one ulp in one float
    body, _ = encode([flipped], False, None)
    assert "rows differ" in check_single(body, "json", want, bits)
    assert "unreadable" in check_single(b"{not json", "json", want, bits)
    assert "features" in check_single(b'{"embeddings": {}}', "json", want, bits)

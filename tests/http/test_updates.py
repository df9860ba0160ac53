"""Live weight updates over real HTTP: readers under load see exactly one version per answer,
bad updates change nothing, and the switches, the token, the CLI and the watched folder."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from safetensors.numpy import save, save_file

from tests.http.server import ROOT, Server

pytestmark = pytest.mark.slow

DIM = 16
PROBE = {"items": (list(range(20)), "item_id"), "categories": (list(range(5)), "category_id")}
OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


def marked(version: int, ids: list[int]) -> np.ndarray:
    """Rows that say which version wrote them: v + id/1000 + column/1e6."""
    i = np.asarray(ids, dtype=np.float64)[:, None]
    c = np.arange(DIM, dtype=np.float64)[None, :]
    return (version + i / 1e3 + c / 1e6).astype(np.float32)


def version_delta(version: int) -> bytes:
    tensors = {}
    for table, (ids, _) in PROBE.items():
        tensors[f"{table}.ids"] = np.asarray(ids, dtype=np.int64)
        tensors[f"{table}.rows"] = marked(version, ids)
    return save(tensors)


def version_reload(server: Server, version: int, folder: Path) -> Path:
    """A whole weights file: the served rows, the probe rows marked with `version`."""
    tables = {n: t.copy() for n, t in server.weights.items()}
    for table, (ids, _) in PROBE.items():
        tables[table][ids] = marked(version, ids)
    path = folder / f"v{version}.safetensors"
    save_file(tables, str(path))
    return path


@pytest.fixture(scope="module")
def reloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder (besides the model's) full reloads may read from."""
    return tmp_path_factory.mktemp("reloads")


@pytest.fixture(scope="module")
def updatable(model_path: Path, reloads: Path) -> Iterator[Server]:
    s = Server(model_path, "--allow-updates", "--reload-roots", f"{model_path.parent}:{reloads}")
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


def read_version(r: httpx.Response, msgpacked: bool, asked: dict[str, list[int]]) -> int:
    """The one version every row of the answer carries; fails on a mix or a header mismatch."""
    assert r.status_code == 200, r.text
    body = msgpack.unpackb(r.content) if msgpacked else r.json()
    versions = set()
    for feature, ids in asked.items():
        e = body["embeddings"][feature]
        if msgpacked:
            got = np.frombuffer(e["data"], dtype="<f4").reshape(e["shape"])
        else:
            got = np.asarray(e, dtype=np.float32)
        v = int(round(float(got[0, 0]) - ids[0] / 1e3))
        assert np.array_equal(got, marked(v, ids)), f"{feature}: rows of several versions"
        versions.add(v)
    assert len(versions) == 1, f"features answered from versions {versions}"
    (v,) = versions
    assert int(r.headers["x-model-version"]) == v, "the header names another version"
    return v


def test_readers_under_load_see_exactly_one_version_per_answer(
    updatable: Server, reloads: Path
) -> None:
    c = updatable.client
    first = c.post("/models/small/weights", content=version_delta(2), headers=OCTET).json()
    assert first == {"version": 2, "rows": 25}
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def reader(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=updatable.url, timeout=30) as client:
            while not stop.is_set():
                asked = {
                    f: sorted(rng.sample(ids, rng.randint(1, len(ids))))
                    for ids, f in PROBE.values()
                }
                msgpacked = k % 2 == 1
                try:
                    if msgpacked:
                        r = client.post(
                            "/predictions/small",
                            content=msgpack.packb({"features": asked}),
                            headers={
                                "Content-Type": "application/msgpack",
                                "Accept": "application/msgpack",
                            },
                        )
                    else:
                        r = client.post("/predictions/small", json={"features": asked})
                    seen.append(read_version(r, msgpacked, asked))
                except Exception as e:  # noqa: BLE001 - every failure is reported below
                    failures.append(repr(e))

    with ThreadPoolExecutor(12) as pool:
        readers = [pool.submit(reader, k) for k in range(12)]
        for v in range(3, 13):
            time.sleep(0.15)
            if v in (6, 10):
                path = version_reload(updatable, v, reloads)
                r = c.post("/models/small/weights", json={"safetensors": str(path)})
            else:
                r = c.post("/models/small/weights", content=version_delta(v), headers=OCTET)
            assert r.status_code == 200 and r.json()["version"] == v, r.text
        time.sleep(0.15)
        stop.set()
        for f in readers:
            f.result()
    assert not failures, failures[:5]
    print(f"{len(seen)} answers checked over versions {sorted(set(seen))}")
    assert len(set(seen)) >= 6, f"readers saw too few versions to test anything: {set(seen)}"
    assert seen and min(seen) >= 2 and max(seen) == 12
    assert c.get("/models/small").json()["version"] == 12
    assert updatable.metric("seqserve_model_version") == 12


def test_bad_updates_are_400_naming_the_problem_and_change_nothing(
    updatable: Server, reloads: Path
) -> None:
    c = updatable.client
    (reloads / "escape").symlink_to("/etc/passwd")
    (reloads / "not-a-checkpoint").mkdir()
    before = c.get("/models/small").json()["version"]
    ids = [0, 7, 4999]
    rows_before = c.post("/predictions/small", json={"features": {"item_id": ids}}).json()
    good = version_delta(99)
    cases = [
        (
            save({"ghost.ids": np.array([1]), "ghost.rows": np.zeros((1, DIM), np.float32)}),
            OCTET,
            "table 'ghost' is not in model 'small'",
        ),
        (
            save({"items.ids": np.array([1]), "items.rows": np.zeros((1, 8), np.float32)}),
            OCTET,
            "'items.rows' must be float32 [1, 16]",
        ),
        (
            save({"items.ids": np.array([1, 1]), "items.rows": np.zeros((2, DIM), np.float32)}),
            OCTET,
            "repeats id 1",
        ),
        (
            save({"items.ids": np.array([5000]), "items.rows": np.zeros((1, DIM), np.float32)}),
            OCTET,
            "id 5000 is outside [0, 5000)",
        ),
        (
            save({"items.ids": np.array([1.0]), "items.rows": np.zeros((1, DIM), np.float32)}),
            OCTET,
            "must be int64",
        ),
        (good[: len(good) // 2], OCTET, "not a readable safetensors file"),
        (
            b'{"safetensors": "%s/no-such-file.safetensors"}' % str(reloads).encode(),
            {"Content-Type": "application/json"},
            "does not exist; version",
        ),  # fmt: skip
        (
            b'{"dcp": "%s/not-a-checkpoint"}' % str(reloads).encode(),
            {"Content-Type": "application/json"},
            "is not a torch.distributed",
        ),
        (
            b'{"safetensors": "%s"}' % str(reloads).encode(),
            {"Content-Type": "application/json"},
            f"{reloads} is not a file",
        ),
        # anywhere else the server's user can read: refused for where it is, before reading
        (b'{"safetensors": "/etc/passwd"}', JSON, "resolves to /etc/passwd, outside the folders"),
        (b'{"dcp": "/proc/self"}', JSON, "outside the folders reloads may read"),
        (b'{"dcp": "/tmp"}', JSON, "outside the folders reloads may read"),
        (
            b'{"safetensors": "%s%s/etc/passwd"}' % (str(reloads).encode(), b"/.." * 20),
            JSON,
            "resolves to /etc/passwd, outside",
        ),
        (
            b'{"safetensors": "%s/escape"}' % str(reloads).encode(),
            JSON,
            "resolves to /etc/passwd, outside",
        ),
        (
            save({"items.ids": np.array([2]), "items.rows": np.full((1, DIM), np.inf, np.float32)}),
            OCTET,
            "'items.rows' row 0 (id 2) holds NaN or inf",
        ),
    ]
    for body, headers, message in cases:
        r = c.post("/models/small/weights", content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "BadUpdate" and message in r.json()["message"], r.text
    r = c.post("/models/small/weights", content=good, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert c.post("/models/other/weights", content=good, headers=OCTET).status_code == 404
    assert c.get("/models/small").json()["version"] == before
    after = c.post("/predictions/small", json={"features": {"item_id": ids}}).json()
    assert after == rows_before
    assert updatable.metric('seqserve_weight_updates_total{kind="delta",outcome="rejected"}') >= 6


def test_updates_are_off_unless_allowed(server: Server) -> None:
    r = server.client.post("/models/small/weights", content=version_delta(5), headers=OCTET)
    assert r.status_code == 403 and "--allow-updates" in r.json()["message"]
    assert server.client.get("/models/small").json()["version"] == 1
    # Refused before the body is read: a client announcing 3 GB gets its 403 at once.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /models/small/weights HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 3000000000\r\n\r\n"
        )
        head = b""
        while len(head) < 13 and (part := s.recv(64)):
            head += part
        assert head.startswith(b"HTTP/1.1 403 "), head


def test_the_token_guards_updates_and_an_exposed_server_needs_one(model_path: Path) -> None:
    guarded = Server(model_path, "--allow-updates", "--auth-token", "tok")
    try:
        guarded.wait_ready()
        body = version_delta(3)
        r = guarded.client.post("/models/small/weights", content=body, headers=OCTET)
        assert r.status_code == 401
        ok = {**OCTET, "Authorization": "Bearer tok"}
        assert guarded.client.post("/models/small/weights", content=body, headers=ok).json() == {
            "version": 2,
            "rows": 25,
        }
    finally:
        guarded.close()
    out = subprocess.run(
        [sys.executable, "-m", "serving.commands.cli", "serve", "--model", str(model_path)]
        + ["--host", "0.0.0.0", "--allow-updates"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "seqserve: error: --allow-updates on 0.0.0.0 needs --auth-token: anyone who can reach "
        "this host could replace the weights"
    )


def test_seqserve_update_pushes_a_delta_and_a_reload(
    updatable: Server, tmp_path: Path, reloads: Path
) -> None:
    version = updatable.client.get("/models/small").json()["version"]
    (tmp_path / "d.safetensors").write_bytes(version_delta(version + 1))

    def update(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving.commands.cli", "update", "--url", updatable.url]
            + ["--model", "small", *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = update("--delta", str(tmp_path / "d.safetensors"))
    assert out.returncode == 0 and out.stdout.strip() == f"version {version + 1} (25 rows)"
    weights = str(reloads / "no-such.safetensors")
    out = update("--weights", weights)
    assert out.returncode == 2 and "400 from" in out.stderr and "does not exist" in out.stderr
    path = version_reload(updatable, version + 2, reloads)
    out = update("--weights", str(path))
    assert out.returncode == 0 and out.stdout.strip() == f"version {version + 2} (5080 rows)"
    # The OpenAPI document names the version now served on the v2 routes.
    doc = updatable.client.get("/openapi.json").json()
    versioned = doc["paths"]["/v2/models/{model}/versions/{version}/infer"]["parameters"][1]
    assert versioned["schema"]["enum"] == [str(version + 2)]

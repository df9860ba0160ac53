"""`seqserve serve --workers 2`: front processes over one engine process, as real processes on
real ports. Exact answers over every protocol and both engines, one version per answer across
fronts, the host's totals on /metrics, torch-free fronts, and the faults: a front killed, the
engine killed, the parent SIGKILLed, SIGTERM under load."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from safetensors.numpy import save

from tests.http.server import Server, same_bits, write_small_model
from tests.procs import alive, wait_gone

pytestmark = pytest.mark.slow

IDS = {"item_id": [0, 17, 17, 4999, 3], "category_id": [5, 49], "shop_id": [29]}


def processes(s: Server) -> dict[str, list[int]]:
    """kind -> pids, from /models/small."""
    out: dict[str, list[int]] = {}
    for p in s.client.get("/models/small").json()["processes"]:
        out.setdefault(p["kind"], []).append(p["pid"])
    return out


def fresh_post(s: Server, body: dict[str, Any]) -> httpx.Response:
    """A request on a connection of its own: the kernel picks its front."""
    with httpx.Client(base_url=s.url, timeout=30) as c:
        return c.post("/predictions/small", json=body)


def exact(s: Server, r: httpx.Response, ids: dict[str, list[int]]) -> bool:
    got = r.json()["embeddings"]
    return all(same_bits(np.asarray(got[f]), s.rows(f, v)) for f, v in ids.items())


def wait_until(what: Any, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if what():
                return
        except (httpx.TransportError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not hold in {timeout} s")


@pytest.fixture(scope="module")
def host(model_path: Path) -> Iterator[Server]:
    s = Server(model_path, "--workers", "2", "--allow-updates")
    try:
        s.wait_ready()
        wait_until(lambda: len(processes(s).get("front", [])) == 2)
        yield s
    finally:
        s.close()


def test_processes_and_torch_free_fronts(host: Server) -> None:
    kinds = processes(host)
    assert len(kinds["engine"]) == 1 and len(kinds["front"]) == 2
    for pid in kinds["front"]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "fbgemm" not in maps, f"front {pid} loaded torch"
    parent_maps = Path(f"/proc/{host.proc.pid}/maps").read_text()
    assert "libtorch" not in parent_maps, "the parent loaded torch"
    engine_maps = Path(f"/proc/{kinds['engine'][0]}/maps").read_text()
    assert "libtorch" in engine_maps  # the checks above can fail: the engine has it


def test_native_json_and_msgpack_are_exact_across_fronts(host: Server) -> None:
    for _ in range(8):  # connections of their own: both fronts answer some
        assert exact(host, fresh_post(host, {"features": IDS}), IDS)
    body = msgpack.packb({"instances": [{"features": IDS}, {"features": {"shop_id": [0, 1]}}]})
    r = host.client.post(
        "/predictions/small",
        content=body,
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert r.status_code == 200 and r.headers["x-model-version"]
    first, second = msgpack.unpackb(r.content)["predictions"]
    for f, ids in IDS.items():
        e = first["embeddings"][f]
        got = np.frombuffer(e["data"], "<f4").reshape(e["shape"])
        assert same_bits(got, host.rows(f, ids)), f
    assert list(second["embeddings"]) == ["shop_id"]


def test_v2_rest_and_grpc_are_exact(host: Server) -> None:
    v2_exact(host)


def v2_exact(host: Server) -> None:
    """Tritonclient over v2 REST and gRPC, a connection each: exact rows."""
    for mod, url in ((th, host.url.removeprefix("http://")), (tg, host.grpc_url)):
        client = mod.InferenceServerClient(url)
        try:
            for _ in range(4):
                tensors = []
                for name, values in IDS.items():
                    t = mod.InferInput(name, [len(values)], "INT64")
                    t.set_data_from_numpy(np.asarray(values, np.int64))
                    tensors.append(t)
                result = client.infer("small", tensors)
                for f, ids in IDS.items():
                    assert same_bits(result.as_numpy(f), host.rows(f, ids)), (mod.__name__, f)
        finally:
            client.close()


def test_metrics_and_statistics_are_the_hosts_totals(host: Server) -> None:
    def served() -> tuple[float, int]:
        n = host.metric('seqserve_requests_total{route="/predictions/{model}",status="200"}')
        stats = host.client.get("/v2/models/small/stats").json()["model_stats"][0]
        return n, stats["inference_count"]

    before, inferences = served()
    for _ in range(20):
        assert fresh_post(host, {"features": {"shop_id": [1]}}).status_code == 200
    after, inferences_after = served()
    assert after - before == 20
    assert inferences_after - inferences == 20


def test_one_version_per_answer_while_deltas_land_through_one_front(host: Server) -> None:
    ids = list(range(100, 110))  # no id of IDS: the other tests still read the files

    def delta(value: float) -> bytes:
        rows = np.full((len(ids), 16), value, np.float32)
        return save({"items.ids": np.asarray(ids, np.int64), "items.rows": rows})

    start = int(host.client.get("/models/small").json()["version"])
    seen: list[tuple[int, np.ndarray]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            r = fresh_post(host, {"features": {"item_id": ids}})
            assert r.status_code == 200, r.text
            seen.append(
                (int(r.headers["x-model-version"]), np.asarray(r.json()["embeddings"]["item_id"]))
            )

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=host.url, timeout=30) as writer:  # one connection: one front
        for k in range(1, 6):
            r = writer.post(
                "/models/small/weights",
                content=delta(float(start + k)),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.json()["version"] == start + k
            time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    versions = {v for v, _ in seen}
    assert len(versions) >= 3, versions
    for version, rows in seen:
        if version > start:  # every row of the answer from that version: its value
            assert np.all(rows == np.float32(version)), (version, rows[:, 0])


def test_a_killed_front_is_restarted_while_the_other_serves(host: Server) -> None:
    victim = processes(host)["front"][0]
    os.kill(victim, signal.SIGKILL)
    failures = 0
    for _ in range(40):  # the survivor answers meanwhile; the victim's connections fail
        try:
            r = fresh_post(host, {"features": IDS})
            assert r.status_code == 200 and exact(host, r, IDS)
        except httpx.TransportError:
            failures += 1
    assert failures < 40
    wait_until(
        lambda: len(processes(host)["front"]) == 2 and victim not in processes(host)["front"]
    )
    for _ in range(8):
        assert exact(host, fresh_post(host, {"features": IDS}), IDS)


def test_a_killed_engine_gives_503s_then_exact_answers(host: Server) -> None:
    engine = processes(host)["engine"][0]
    # Under load with big answers (512 KB a request, more than a socket's buffer), so that the
    # engine likely dies while writing an answer to a front.
    stop = threading.Event()
    big = msgpack.packb({"features": {"item_id": list(range(0, 5000, 5)) * 8}})
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}

    def load() -> None:
        with httpx.Client(base_url=host.url, timeout=30) as c:
            while not stop.is_set():
                with contextlib.suppress(httpx.TransportError):
                    c.post("/predictions/small", content=big, headers=headers)

    loaders = [threading.Thread(target=load) for _ in range(8)]
    for t in loaders:
        t.start()
    time.sleep(1)
    # The fronts stopped while answers are on their way, the engine writes what the sockets
    # take (part of an answer), dies, and the fronts read the part when they go on.
    fronts = processes(host)["front"]
    for pid in fronts:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(0.3)
    os.kill(engine, signal.SIGKILL)
    for pid in fronts:
        os.kill(pid, signal.SIGCONT)
    stop.set()
    for t in loaders:
        t.join(30)
    statuses = set()
    end = time.monotonic() + 5
    while time.monotonic() < end:
        r = fresh_post(host, {"features": IDS})
        statuses.add(r.status_code)
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["type"] == "EngineUnavailable"
            assert host.client.get("/ping").status_code in (200, 503)
            break
    assert 503 in statuses and statuses <= {200, 503}, statuses
    wait_until(lambda: host.client.get("/ping").status_code == 200)
    assert processes(host)["engine"] != [engine]
    wait_until(lambda: fresh_post(host, {"features": IDS}).status_code == 200)
    for _ in range(24):  # every front (the kernel picks one a connection); version 1's rows
        r = fresh_post(host, {"features": IDS})
        assert r.status_code == 200 and exact(host, r, IDS)


def _bindable(port: int) -> bool:
    """As a server binds (SO_REUSEADDR: the connections of the last one may be in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_sigkilled_parent_leaves_no_process_and_free_ports(model_path: Path) -> None:
    s = Server(model_path, "--workers", "2")
    try:
        s.wait_ready()
        wait_until(lambda: len(processes(s).get("front", [])) == 2)
        kinds = processes(s)
        children = [*kinds["engine"], *kinds["front"]]
        s.client.close()  # ours, or the kernel holds its closing connection a moment longer
        s.proc.kill()
        s.proc.wait()
        assert wait_gone(children), [p for p in children if alive(p)]
        # No process holds the ports: they bind once the kernel has closed the dead ones'
        # connections (at once, or within a retransmission).
        wait_until(lambda: _bindable(s.port) and _bindable(s.grpc_port), 5)
    finally:
        s.close()


def test_weights_that_do_not_load_stop_the_host_with_their_error(tmp_path: Path) -> None:
    path = write_small_model(tmp_path)
    text = path.read_text()
    assert "num_embeddings: 5000" in text
    path.write_text(text.replace("num_embeddings: 5000", "num_embeddings: 6000"))  # not the file's
    s = Server(path, "--workers", "2")
    try:
        assert s.proc.wait(120) == 1
        out = s.output()
        assert "seqserve: error:" in out and "items" in out, out
        assert "before it was ready" in out, out
    finally:
        s.close()


@pytest.mark.parametrize("engine", ["distributed"])
def test_the_distributed_engine_under_two_fronts(tmp_path: Path, engine: str) -> None:
    s = Server(write_small_model(tmp_path, engine), "--workers", "2")
    try:
        s.wait_ready(180)
        for _ in range(6):
            assert exact(s, fresh_post(s, {"features": IDS}), IDS)
        v2_exact(s)
        assert s.terminate() == 0
    finally:
        s.close()


def test_sigterm_under_load_drains_every_front_and_exits_0(model_path: Path) -> None:
    s = Server(model_path, "--workers", "2")
    try:
        s.wait_ready()
        outcomes: list[str] = []
        stop = threading.Event()

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                ids = rng.integers(0, 5000, 20).tolist()
                try:
                    r = fresh_post(s, {"features": {"item_id": ids}})
                except httpx.ConnectError:
                    outcomes.append("refused")
                    time.sleep(0.01)
                    continue
                except httpx.TransportError:
                    outcomes.append("unanswered")
                    continue
                if r.status_code == 200:
                    ok = exact(s, r, {"item_id": ids})
                    outcomes.append("ok" if ok else "wrong")
                else:
                    outcomes.append(str(r.status_code))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(2)
        code = s.terminate()
        stop.set()
        for t in threads:
            t.join(60)
        assert code == 0
        assert set(outcomes) <= {"ok", "503", "refused", "unanswered"}, set(outcomes)
        line = next(x for x in s.output().splitlines() if "predictions answered by status" in x)
        server_side = dict(pair.split(":") for pair in line.rsplit(": ", 1)[1].split())
        assert int(server_side.get("200", 0)) == outcomes.count("ok"), line
        assert outcomes.count("ok") > 10
    finally:
        s.close()


def test_the_queue_bound_is_the_hosts_and_answers_queuefull(model_path: Path) -> None:
    s = Server(model_path, "--workers", "2", "--max-queue", "2")
    outcomes: list[str] = []
    try:
        s.wait_ready()
        wait_until(lambda: len(processes(s).get("front", [])) == 2)

        def client() -> None:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                for _ in range(30):
                    r = c.post("/predictions/small", json={"features": IDS})
                    if r.status_code == 200:
                        outcomes.append("exact" if exact(s, r, IDS) else "wrong")
                    elif r.status_code == 503 and r.headers.get("retry-after"):
                        outcomes.append(r.json()["type"])
                    else:
                        outcomes.append(f"{r.status_code} {r.text}")

        threads = [threading.Thread(target=client) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(outcomes) == 24 * 30
        assert set(outcomes) == {"exact", "QueueFull"}, set(outcomes)
    finally:
        s.close()


def test_the_connection_bound_is_the_hosts(model_path: Path) -> None:
    s = Server(model_path, "--workers", "2", "--max-connections", "4")
    socks: list[socket.socket] = []
    try:
        s.wait_ready()
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", s.port))
            socks.append(sock)
        time.sleep(0.5)
        refused = 0
        for sock in socks:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):  # else held open, waiting for a request
                refused += b" 503 " in sock.recv(256)
        assert refused >= 12 - 4, refused
    finally:
        for sock in socks:
            sock.close()
        s.close()


def test_the_token_and_the_updates_folder_hold_for_the_host(
    model_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "updates"
    folder.mkdir()
    s = Server(model_path, "--workers", "2", "--auth-token", "t", "--updates-dir", str(folder))
    auth = {"Authorization": "Bearer t"}
    try:
        s.wait_ready()
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.post("/predictions/small", json={"features": IDS}).status_code == 401
            assert c.get("/models/small").status_code == 401
            r = c.post("/predictions/small", json={"features": IDS}, headers=auth)
            assert r.status_code == 200 and exact(s, r, IDS)
        rows = np.full((2, 16), 7.0, np.float32)
        delta = save({"items.ids": np.asarray([200, 201], np.int64), "items.rows": rows})
        (folder / "0001.tmp").write_bytes(delta)
        (folder / "0001.tmp").rename(folder / "0001.safetensors")
        wait_until(lambda: (folder / "applied" / "0001.safetensors").exists())
        for _ in range(6):  # every front serves the one version the engine moved to, once
            with httpx.Client(base_url=s.url, timeout=30, headers=auth) as c:
                r = c.post("/predictions/small", json={"features": {"item_id": [200, 201]}})
            assert r.headers["x-model-version"] == "2"
            assert np.all(np.asarray(r.json()["embeddings"]["item_id"]) == 7.0)
    finally:
        s.close()

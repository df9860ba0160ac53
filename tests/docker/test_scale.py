"""The compose `scale` profile outside Docker: HAProxy (Debian's, with the profile's command,
environment and docker/haproxy.cfg) in front of two `api` replicas found by DNS, as compose
resolves a scaled service's name. Requests spread over both; once one replica is killed and
the health check has noticed, every request goes to the other and none fails.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.docker.dns import Dns
from tests.docker.files import DOCKER, environment, service
from tests.docker.test_commands import Api
from tests.http.server import free_port

pytestmark = pytest.mark.slow

REPLICAS = ["127.0.0.2", "127.0.0.3"]  # both on loopback, as two containers on one network
CONFIG = "/usr/local/etc/haproxy/seqserve.cfg"  # where the lb image holds docker/haproxy.cfg
BODY = {"features": {"item_id": [3, 17, 17], "category_id": [5]}}


class Balancer:
    """The `lb` service's command, with docker/haproxy.cfg where the image COPYs it."""

    def __init__(self, dns: Dns, api_port: int):
        self.svc = service("lb")
        self.port = free_port()
        env = environment(self.svc)
        assert env["DNS_SERVER"] == "127.0.0.11:53" and env["API_HOST"] == "api"
        env.update(DNS_SERVER=dns.address, LB_ADDR="127.0.0.1", LB_PORT=str(self.port))
        env["API_PORT"] = str(api_port)
        command = [str(DOCKER / "haproxy.cfg") if w == CONFIG else w for w in self.svc["command"]]
        assert command != self.svc["command"] and command[0] == "haproxy"
        self.proc = subprocess.Popen(
            command, env={"PATH": "/usr/sbin:/usr/bin:/bin", **env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Api]]:
    port = free_port()  # one port, two addresses: as two containers' 8080
    apis = []
    for i, host in enumerate(REPLICAS):
        for d in (tmp_path / "models", tmp_path / f"home{i}"):
            d.mkdir(exist_ok=True)
        apis.append(Api(tmp_path / "models", tmp_path / f"home{i}", host=host, port=port))
    try:
        for a in apis:
            a.wait_ready()
        yield apis
    finally:
        for a in apis:
            a.close()


def served(api: Api) -> int:
    """Predictions this replica answered with 200, from its own /metrics."""
    for line in httpx.get(api.url + "/metrics", timeout=10).text.splitlines():
        mine = 'route="/predictions/{model}"' in line and 'status="200"' in line
        if line.startswith("seqserve_requests_total{") and mine:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def post_many(url: str, count: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as c, ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(lambda _: c.post("/predictions/demo", json=BODY).status_code, range(count))
        )


def test_the_balancer_spreads_over_replicas_and_drops_a_dead_one(
    replicas: list[Api], tmp_path: Path
) -> None:
    assert shutil.which("haproxy", path="/usr/sbin:/usr/bin"), "haproxy: make test installs it"
    dns = Dns("api", REPLICAS)
    lb = Balancer(dns, replicas[0].port)
    try:
        end = time.monotonic() + 30
        while sum(served(a) for a in replicas) < 4 and time.monotonic() < end:
            # Until HAProxy listens and both replicas are checked up and in rotation.
            with contextlib.suppress(httpx.TransportError):
                post_many(lb.url, 4)
            time.sleep(0.2)
        before = [served(a) for a in replicas]
        assert post_many(lb.url, 200) == [200] * 200
        spread = [served(a) - b for a, b in zip(replicas, before, strict=True)]
        assert sum(spread) == 200 and min(spread) >= 40, f"not spread over both: {spread}"
        # One replica dies; 2 failed checks 0.5 s apart take it out of rotation.
        replicas[0].proc.kill()
        replicas[0].proc.wait()
        time.sleep(2.0)
        before_other = served(replicas[1])
        assert post_many(lb.url, 200) == [200] * 200
        assert served(replicas[1]) - before_other == 200
    finally:
        out = lb.close()
        dns.close()
    assert "is DOWN" in out, out  # HAProxy saw the replica go

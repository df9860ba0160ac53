"""What the FastAPI front needs around uvicorn: the ready banner, the open-files limit."""

from __future__ import annotations

import errno
import json
import resource
import socket

from serving.config import ModelSpec
from serving.settings import ServerSettings


def example_body(spec: ModelSpec) -> dict[str, object]:
    rows = spec.table_of()
    demo = {"item_id": [3, 17, 17], "category_id": [5]}
    if all(f in rows for f in demo):
        return {"features": demo}
    first = spec.features[0]
    return {"features": {first: [0, rows[first].num_embeddings - 1]}}


def banner(spec: ModelSpec, settings: ServerSettings, engine: str) -> str:
    url = f"http://{settings.host}:{settings.port}"
    fronts = f", {settings.workers} front processes" if settings.workers > 1 else ""
    body = json.dumps(example_body(spec))
    return (
        f"seqserve: model '{spec.name}' ready on {url} "
        f"({spec.sharding.world_size} ranks, {engine} engine{fronts})\n"
        f"  curl -s -X POST {url}/predictions/{spec.name} "
        f"-H 'Content-Type: application/json' -d '{body}'\n"
        f"  health {url}/ping   spec {url}/models/{spec.name}   metrics {url}/metrics   "
        f"docs {url}/docs\n"
        f"  Open Inference Protocol v2: REST {url}/v2/models/{spec.name}/infer, "
        f"gRPC {settings.host}:{settings.grpc_port}"
    )


def open_files_for(connections: int) -> None:
    """Raise the soft open-files limit, within the hard one, to hold `connections` sockets and
    the server's own files: at the usual soft limit of 1024 the OS, not --max-connections,
    would refuse connections first (accept() failing with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def shared_listener(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that the host's other front processes bind too
    (SO_REUSEPORT: the kernel spreads new connections over the listening ones by their
    address hash)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)  # not listening yet: the server listens once its host has started
    return sock


def ports_taken(settings: ServerSettings) -> str | None:
    """Why the HTTP and gRPC ports cannot be bound on --host, in one line, or None. Checked
    before anything loads (a rank may take minutes), by binding each as uvicorn does."""
    host = settings.host
    ports = {"HTTP, --port": settings.port, "gRPC, --grpc-port": settings.grpc_port}
    if len(set(ports.values()) - {0}) < len([p for p in ports.values() if p]):
        return f"cannot listen on {host}: --port and --grpc-port are the same port"
    problems = []
    for what, port in ports.items():
        if not port:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as e:
            taken = e.errno == errno.EADDRINUSE
            problems.append(f"port {port} ({what}) is " + ("taken" if taken else str(e.strerror)))
    if not problems:
        return None
    return f"cannot listen on {host}: {', '.join(problems)}; nothing was loaded"

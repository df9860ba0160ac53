"""The choice between the engines: `create` builds the one a spec (or a flag) asks for."""

from __future__ import annotations

from serving.config import ModelSpec
from serving.engine.base import Engine
from serving.errors import SpecError
from serving.settings import ServerSettings


def for_settings(spec: ModelSpec, settings: ServerSettings) -> Engine:
    """The engine `seqserve serve` runs."""
    # A hung rank must be noticed well within a request's deadline, so its callers get a 503.
    return create(
        spec,
        settings.engine,
        dispatch=settings.dispatch,
        batch_timeout=min(settings.rank_timeout_s, settings.request_timeout_s),
        nnodes=settings.nnodes,
        master=(settings.host, settings.master_port),
        cluster_key=settings.cluster_key,
        cluster_interface=settings.cluster_interface,
        join_timeout=settings.join_timeout_s,
    )


def create(
    spec: ModelSpec,
    kind: str = "",
    *,
    device: str | None = None,
    dispatch: str = "split",
    batch_timeout: float = 60.0,
    nnodes: int = 1,
    master: tuple[str, int] = ("127.0.0.1", 0),
    cluster_key: str = "",
    cluster_interface: str = "",
    join_timeout: float = 20.0,
) -> Engine:
    """The engine the spec asks for (`sharding.engine`), unless `kind` overrides it. The
    other settings concern the distributed engine's rank processes, `nnodes` > 1 spreading
    them over hosts whose workers join at `master`."""
    kind = kind or spec.sharding.engine
    if kind == "distributed":
        from serving.engine.distributed.driver import DistributedEngine

        return DistributedEngine(
            spec,
            device=device,
            dispatch=dispatch,  # type: ignore[arg-type]
            batch_timeout=batch_timeout,
            nnodes=nnodes,
            master=master,
            cluster_key=cluster_key.encode(),
            cluster_interface=cluster_interface,
            join_timeout=join_timeout,
        )
    if nnodes > 1:
        raise SpecError(f"--nnodes {nnodes} needs the distributed engine (--engine distributed)")
    from serving.engine.local.engine import LocalEngine

    return LocalEngine(spec, device=device)

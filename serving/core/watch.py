"""`--updates-dir`: row deltas a training job publishes as files, applied once each.

Every `*.safetensors` file that appears in the folder is applied in name order (so names that
sort by time, e.g. `000123.safetensors`, apply in publishing order), then moved to `applied/`,
so a restart never replays it. One that is rejected goes to `rejected/` with a `.reason` file
beside it, and the next one is applied. Write a file under another name and rename it to
`*.safetensors` when complete: a rename is atomic, so a half-written file is never read.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from serving.core.host import Host
from serving.errors import BadUpdate, EngineUnavailable

log = logging.getLogger("seqserve")

POLL_S = 0.5  # how often the folder is listed


async def watch(service: Host, folder: Path) -> None:
    applied, rejected = folder / "applied", folder / "rejected"
    for d in (folder, applied, rejected):
        d.mkdir(parents=True, exist_ok=True)
    while True:
        for path in sorted(folder.glob("*.safetensors")):
            if not await apply_file(service, path, applied, rejected):
                break  # not serving yet (or restarting): try again on the next round
        await asyncio.sleep(POLL_S)


async def apply_file(service: Host, path: Path, applied: Path, rejected: Path) -> bool:
    """Apply one file and move it; False if the server cannot take updates right now."""
    try:
        body = await asyncio.to_thread(path.read_bytes)
        changed = await service.change(body, "delta", source=f"updates-dir {path.name}")
    except EngineUnavailable:
        return False
    except Exception as e:  # a bad file must not stop the folder: set it aside, go on
        reason = str(e) if isinstance(e, BadUpdate | OSError) else f"internal error: {e!r}"
        log.warning("updates-dir: rejected %s: %s", path.name, reason)
        (rejected / (path.name + ".reason")).write_text(reason + "\n")
        path.replace(rejected / path.name)
        return True
    log.info("updates-dir: %s applied, version %d", path.name, changed.version)
    path.replace(applied / path.name)
    return True

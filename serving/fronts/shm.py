"""Triton's system shared memory extension (docs/protocols.md#shared-memory): a client on this
host registers a region of a file in /dev/shm, then names it in an infer request's inputs
(read from there instead of the body) and outputs (written there instead of the answer).

Off unless --allow-shared-memory. Every argument is checked before anything is read or
written: the region name, the key (one file directly in /dev/shm, opened without following a
symlink, a regular file), offsets and sizes within the region and the region within the file.
Reads and writes go through the file descriptor (pread, pwrite), not a mapping: a client that
shrinks its file afterwards gets a 400, never a SIGBUS in the server. All of it runs on the
event loop, so a region cannot be unregistered between the check and the copy; an output whose
region was unregistered (or re-registered) while its request ran is a 400 naming it, and
nothing is written.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import ModelSpec
from serving.errors import InvalidInput, SharedMemoryDisabled

SHM_DIR = Path("/dev/shm")
NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
KEY_RE = re.compile(r"^/?[A-Za-z0-9_.:-]{1,200}$")
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int  # of the region in the file
    byte_size: int
    fd: int

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }


@dataclass(frozen=True)
class Slice:
    """`nbytes` bytes at `offset` in a region: an input's data, read once checked."""

    region: Region
    offset: int  # in the region
    nbytes: int
    where: str

    def read(self) -> bytes:
        r = self.region
        data = os.pread(r.fd, self.nbytes, r.offset + self.offset)
        if len(data) != self.nbytes:
            raise InvalidInput(
                f"{self.where}: shared memory region '{r.name}' (key '{r.key}') ended after "
                f"{len(data)} of {self.nbytes} bytes: its file shrank after registration",
                self.where,
            )
        return data


class SharedMemory:
    """The registered regions of one server."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.regions: dict[str, Region] = {}

    def check_enabled(self) -> None:
        if not self.enabled:
            raise SharedMemoryDisabled(
                "system shared memory is off: start the server with --allow-shared-memory"
            )

    # -- the extension's calls ------------------------------------------------------------

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        self.check_enabled()
        _check_name(name)
        if name in self.regions:
            raise InvalidInput(
                f"shared memory region '{name}' is already registered; unregister it first",
                "name",
            )
        if not isinstance(key, str) or not KEY_RE.match(key) or key.strip("/") in (".", ".."):
            raise InvalidInput(
                f"key {str(key)[:80]!r}: a region's key names one file directly in {SHM_DIR}, "
                "as shm_open does ('/name': letters, digits, '_', '.', ':', '-')",
                "key",
            )
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if type(value) is not int or value < 0:
                raise InvalidInput(f"{field}: expected a byte count, not {value!r}", field)
        if byte_size == 0:
            raise InvalidInput("byte_size: a region holds at least one byte", "byte_size")
        path = SHM_DIR / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise InvalidInput(
                f"key '{key}': cannot open {path}: {e.strerror} (a regular file in {SHM_DIR}, "
                "not a symlink, readable and writable by the server's user)",
                "key",
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"key '{key}': {path} is not a regular file", "key")
            if offset + byte_size > info.st_size:
                raise InvalidInput(
                    f"key '{key}': offset {offset} + byte_size {byte_size} runs past the end of "
                    f"{path} ({info.st_size} bytes)",
                    "byte_size",
                )
        except BaseException:
            os.close(fd)
            raise
        self.regions[name] = Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str = "") -> None:
        """One region, or every region when `name` is empty."""
        self.check_enabled()
        names = [self.region(name).name] if name else list(self.regions)
        for n in names:
            os.close(self.regions.pop(n).fd)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        self.check_enabled()
        regions = [self.region(name)] if name else list(self.regions.values())
        return [r.status() for r in regions]

    def region(self, name: str, where: str = "name") -> Region:
        _check_name(name, where)
        region = self.regions.get(name)
        if region is None:
            raise InvalidInput(f"{where}: no shared memory region '{name}' is registered", where)
        return region

    def close(self) -> None:
        for region in self.regions.values():
            os.close(region.fd)
        self.regions.clear()

    # -- infer requests -------------------------------------------------------------------

    def slice(self, params: dict[str, Any], where: str) -> Slice | None:
        """The region an input's or output's parameters name, checked; None if they name
        none. `params` maps the parameter names to plain values."""
        name = params.get(REGION)
        if name is None:
            for p in (BYTE_SIZE, OFFSET):
                if p in params:
                    raise InvalidInput(f"{where}.parameters.{p}: needs {REGION}", where)
            return None
        self.check_enabled()
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.parameters.{REGION}: expected a string", where)
        region = self.region(name, f"{where}.parameters.{REGION}")
        size, offset = params.get(BYTE_SIZE), params.get(OFFSET, 0)
        for p, value in ((BYTE_SIZE, size), (OFFSET, offset)):
            if type(value) is not int or value < 0:
                raise InvalidInput(
                    f"{where}.parameters.{p}: expected a byte count, not {value!r}", where
                )
        assert isinstance(size, int) and isinstance(offset, int)
        if offset + size > region.byte_size:
            raise InvalidInput(
                f"{where}: {OFFSET} {offset} + {BYTE_SIZE} {size} runs past the end of shared "
                f"memory region '{name}' ({region.byte_size} bytes)",
                where,
            )
        return Slice(region, offset, size, where)

    def write_rows(self, target: Slice, rows: np.ndarray) -> int:
        """An output's float32 rows into its region; the bytes written."""
        data = np.ascontiguousarray(rows, dtype="<f4").reshape(-1).view(np.uint8).data
        self.write(target, data)
        return data.nbytes

    def write(self, target: Slice, data: memoryview) -> None:
        """An output's bytes into the region it named, if that region is still registered."""
        region = target.region
        if self.regions.get(region.name) is not region:
            raise InvalidInput(
                f"{target.where}: shared memory region '{region.name}' was unregistered while "
                "the request ran; nothing was written",
                target.where,
            )
        if data.nbytes > target.nbytes:
            raise InvalidInput(
                f"{target.where}: the output is {data.nbytes} bytes; {BYTE_SIZE} "
                f"{target.nbytes} cannot hold it",
                target.where,
            )
        at = region.offset + target.offset
        if os.fstat(region.fd).st_size < at + data.nbytes:
            raise InvalidInput(
                f"{target.where}: the file of shared memory region '{region.name}' shrank "
                "after registration; nothing was written",
                target.where,
            )
        done = 0
        while done < data.nbytes:
            done += os.pwrite(region.fd, data[done:], at + done)


def check_fits(
    targets: Mapping[str, Slice], sequences: Sequence[Mapping[str, Any]], spec: ModelSpec
) -> None:
    """Before computing: each output's region holds its [n, dim] float32 rows."""
    if not targets:
        return
    tables = spec.table_of()
    for name, target in targets.items():
        need = sum(len(s[name]) for s in sequences) * tables[name].embedding_dim * 4
        if need > target.nbytes:
            raise InvalidInput(
                f"{target.where}: output '{name}' is {need} bytes; {BYTE_SIZE} {target.nbytes} "
                "cannot hold it",
                target.where,
            )


def _check_name(name: str, where: str = "name") -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"{where}: region name {name[:80]!r} is not 1-128 letters, digits, '_', '.', ':' "
            "or '-'",
            where,
        )

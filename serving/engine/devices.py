"""The devices this host offers the engines."""

from __future__ import annotations

import torch


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_device() -> str:
    return "cuda" if gpu_count() else "cpu"

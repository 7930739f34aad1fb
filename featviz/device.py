"""Which torch device a stage runs on: one rule for every command."""

from __future__ import annotations

import re

import torch

from featviz.errors import ConfigError

NAMES = ("auto", "cpu", "cuda", "mps")  # what a config's device may be; resolve_device also takes cuda:N


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; cpu, cuda, cuda:N or mps as named. A name that is none of
    these, or a device that is not there, is a ConfigError."""
    if not isinstance(name, str) or not (name.strip() in NAMES or re.fullmatch(r"cuda:\d+", name.strip())):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    name = name.strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} requested but CUDA is not available on this machine")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
        return dev
    if name == "mps" and not _mps():
        raise ConfigError("--device mps requested but MPS is not available on this machine")
    return torch.device(name)


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())

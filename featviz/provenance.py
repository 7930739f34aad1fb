"""Where a run came from: versions, git commit, machine. Recorded in run.json."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torchvision


def git_sha() -> str | None:
    """The featviz source's commit (with '+dirty' for local changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def featviz_version() -> str:
    """The installed distribution's version (the package front is above this module: not imported here)."""
    try:
        return importlib.metadata.version("featviz")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def versions() -> dict[str, str]:
    return {
        "featviz": featviz_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def provenance(device: torch.device) -> dict:
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_sha": git_sha(),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "determinism": {"cudnn_deterministic": True, "cudnn_benchmark": False},
    }

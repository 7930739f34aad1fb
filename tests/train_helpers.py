"""What the training tests share: the default step snapshots, a run's snapshot bytes, the tiny API options."""

from __future__ import annotations

LOG_STEPS = [f"step_{s:07d}.safetensors" for s in (1, 2, 4)]  # the default schedule at 7 batches per epoch


def _snapshot_bytes(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run.path / "snapshots").glob("*.safetensors"))}


TINY_API = dict(
    n_train=200, n_val=50, size=16, widths=(4, 8), kernels=(5, 3), strides=(1, 1), pools=(True, False), batch_size=32
)

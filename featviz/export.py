"""Export a run to TensorBoard event files, for people who already watch training there.

In: a run folder (trained; rendered and analyzed for the pictures and numbers beyond the metrics).
Out: event files under DIR, written with ``torch.utils.tensorboard`` (the optional ``tensorboard``
package). Every value is placed at its snapshot's optimizer step (``global_step``): training metrics
as scalars (``train/*``, ``val/*``, ``lr``), the analysis per layer as scalars (``rotation_from_init/``,
``change_from_previous/``, ``cka_to_final/``, ``am_incompressibility/``, ``am_structure_bits/``), filter
grids in both views (``filters/``, ``filters_learned/``) and activation-maximization grids (``actmax/``) as
images, and a weight histogram per layer and snapshot (``weights/``). Reads the run only; never changes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featviz.errors import ConfigError, RunError
from featviz.images import decode_png
from featviz.run.fileio import not_a_file
from featviz.run.renderset import choose_settings_set, records_of
from featviz.run.store import Run


def _writer(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "featviz export --tensorboard needs the tensorboard package: "
            "pip install 'featviz[tensorboard]' (or pip install tensorboard)"
        ) from None
    return SummaryWriter(log_dir=str(out_dir))


def export_tensorboard(run: Run, out_dir: Path, settings_set: str | None = None) -> dict[str, int]:
    """Write ``run`` as TensorBoard events into ``out_dir``; returns how many scalars, images and
    histograms were written."""
    out_dir = not_a_file(Path(out_dir), "tensorboard folder")
    try:  # here, not inside tensorboard's writer, so a folder that cannot be made is one line
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create tensorboard folder {out_dir}: {e.strerror or e}") from None
    writer = _writer(out_dir)
    counts = {"scalars": 0, "images": 0, "histograms": 0}

    def scalar(tag: str, value: Any, step: int) -> None:
        if isinstance(value, (int, float)) and value == value:  # skip None and NaN
            writer.add_scalar(tag, float(value), int(step))
            counts["scalars"] += 1

    try:
        for rec in run.metrics(strict=False):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                scalar(key.replace("_", "/", 1) if key != "lr" else "lr", rec.get(key), rec["step"])
        analysis = run.read_analysis() or {}
        for name, u in analysis.get("updates_by_step", {}).items():
            for key in ("rotation_from_init", "change_from_previous"):
                for step, v in zip(u["steps"], u[key]):
                    scalar(f"{key}/{name}", v, step)
        for name, conv in analysis.get("convergence", {}).items():
            if isinstance(conv, dict) and "by_step" in conv:
                for step, v in zip(conv["by_step"]["steps"], conv["by_step"]["cka_to_final"]):
                    scalar(f"cka_to_final/{name}", v, step)
        for name, per in analysis.get("complexity_by_step", {}).items():
            for step, stats in per.items():
                scalar(f"am_incompressibility/{name}", stats["incompressibility"]["mean"], int(step))
                scalar(f"am_structure_bits/{name}", stats["structure"]["mean"], int(step))
        index = run.render_index()
        sid = choose_settings_set(index, run.info.data.size, settings_set)
        pictures = [r for r in index if r.kind in ("filters", "filters_learned")] + [
            r for r in records_of(index, sid) if r.kind == "am_grid"
        ]
        for rec in pictures:
            if rec.step is None:  # a record written before snapshots carried their step
                continue
            tag = {"filters": "filters", "filters_learned": "filters_learned", "am_grid": "actmax"}[rec.kind]
            img = decode_png(run.read_file_bytes(rec.file))
            writer.add_image(
                f"{tag}/{rec.layer}", img if img.shape[0] == 3 else img.expand(3, -1, -1), rec.step, dataformats="CHW"
            )
            counts["images"] += 1
        for point in run.snapshot_points():
            state = run.load_point(point)
            for layer in run.info.layers:
                writer.add_histogram(f"weights/{layer.name}", state[f"{layer.name}.weight"].float(), point.step)
                counts["histograms"] += 1
    finally:
        writer.close()
    return counts

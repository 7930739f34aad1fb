"""The one module that runs the stages against a run folder: train, resume, render, analyze, gallery.

In: configs or a run folder. Out: the run folder, updated through the store. Each stage module does
its own work and knows no other stage (``training``: the loop; ``render``: pictures; ``analyze``: the
numbers; ``gallery.build``: the page); this module calls them in order. Invariants: every check
that can fail runs before work is written; ``render_run`` and ``analyze_run`` leave an up-to-date
gallery, so ``featviz train``, ``featviz render``, ``featviz analyze`` is the whole job.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable

import torch

import featviz.analyze as analyze_stage
import featviz.distributed as distributed
import featviz.render as render_stage
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig, from_dict, to_dict
from featviz.data import ImageData, load_data
from featviz.device import resolve_device
from featviz.errors import ConfigError, RunError
from featviz.gallery.build import build_gallery
from featviz.layers import is_deep, select_layers, trace
from featviz.loading import allow, build_run_model, check_access, fitting
from featviz.model import build_model
from featviz.optvis.param import color_matrix_or_none
from featviz.progress import SilentTraining, StageProgress, TrainProgress, silent
from featviz.run import renderset
from featviz.run.fileio import save_tensors
from featviz.run.outputs import check_new_run, check_out_dir
from featviz.run.records import describe_run
from featviz.run.store import Run
from featviz.schedule import moments
from featviz.training import fit, optimizer_state
from featviz.zoo import ModelSpec, check_output
from featviz.zoo import build as build_spec


def default_run_name(data_name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in data_name.split("/")[-1].replace("folder:", ""))
    return f"{stem.strip('-') or 'run'}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train_run(
    data_cfg: DataConfig = DataConfig(),
    model_cfg: ModelConfig = ModelConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    out_dir: str | Path = "outputs",
    name: str | None = None,
    force: bool = False,
    progress: TrainProgress | None = None,
    model_spec: ModelSpec | None = None,
) -> Run:
    """Train a new run and write every epoch's snapshot (epoch 0 = init). Returns the finished Run.

    The network is featviz's SmallCNN of ``model_cfg``, or the factory of ``model_spec`` (any
    architecture, ``featviz.zoo``); either way its input channels and class count are the data set's.
    """
    group = distributed.setup(train_cfg.device)
    device = group.device or resolve_device(train_cfg.device)
    name = distributed.share_text(group, name or default_run_name(data_cfg.name))  # rank 0's timestamp
    distributed.check_batch(group, train_cfg.batch_size)
    out = check_out_dir(Path(out_dir))
    reading = data_folders(data_cfg)
    check_new_run(out, name, force, reading)  # fail before spending seconds on data (every rank: the same answer)
    distributed.barrier(group)
    data = distributed.rank0_first(group, load_data, data_cfg)  # one download, not one per process
    model, model_dict = _new_model(data, model_cfg, model_spec, train_cfg.seed)
    run = None
    if group.main:  # rank 0 alone describes and creates the run
        layers = trace(model, data.image_channels, data.size)
        color = color_matrix_or_none(data.train_x)  # the render step's decorrelated colour, from the training images
        info = describe_run(
            name,
            {"data": to_dict(data_cfg), "model": model_dict, "train": to_dict(train_cfg)},
            data.describe(color),
            layers,
            model,
            device,
            seed=train_cfg.seed,
            processes=group.world,
        )
        run = Run.create(out, name, info, force=force, reading=reading)  # holds the run's train lock
    distributed.barrier(group)
    run = run or Run.open(out / name)
    try:
        return _fit(
            run, data, model, train_cfg, device, first_epoch=1, progress=progress or SilentTraining(), group=group
        )
    finally:
        run.release()


def data_folders(cfg: DataConfig) -> list[Path]:
    """The folders a data config reads images from: a run that holds one is never replaced by ``--force``."""
    return [Path(cfg.name.split(":", 1)[1])] if cfg.name.startswith("folder:") else [Path(cfg.data_dir)]


def _new_model(
    data: ImageData, model_cfg: ModelConfig, spec: ModelSpec | None, seed: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network to train, adapted to the data, and its run.json description."""
    if spec is None:
        model_cfg = dataclasses.replace(model_cfg, in_channels=data.image_channels, num_classes=len(data.classes))
        return build_model(model_cfg, seed=seed), to_dict(model_cfg)
    spec = dataclasses.replace(spec, in_channels=data.image_channels, num_classes=len(data.classes))
    model = build_spec(spec, seed=seed)
    check_output(model, spec, data.size)
    return model, spec.as_dict()


def resume_run(
    path: str | Path,
    device: str | None = None,
    progress: TrainProgress | None = None,
    model: str | None = None,
    trust_run_code: bool = False,
) -> Run:
    """Continue ``path`` from its last committed epoch with the run's own configuration (``model``,
    ``trust_run_code``: see ``loading.allow``, for runs of a model outside torchvision and featviz)."""
    run = Run.open(Path(path))
    group = distributed.setup(device or run.info.configs["train"].get("device", "auto"))
    if run.info.source in ("record", "import"):
        raise RunError(
            f"run {run.path} was {run.info.source}ed from your own code or checkpoints; "
            "featviz train --resume continues only runs featviz trained"
        )
    allow(run, model, trust_run_code)
    # every refusal before anything is removed: a run that cannot be resumed is left exactly as it was
    if not (run.path / "manifest.json").is_file():
        raise RunError(
            f"run {run.path} has no manifest.json, so no epoch can be trusted as committed; nothing was "
            "changed (featviz check RUN tells what is there)"
        )
    done = run.epochs_done
    if done < 0:
        raise RunError(f"run {run.path} has no complete epoch to resume from; start it again with --force")
    if run.complete:
        raise RunError(f"run {run.path} is already complete ({done} epochs)")
    if group.main:
        run.hold("train")  # one writer: a second resume, or a train --force of the same run, is refused
    try:
        if group.main:
            run.discard_uncommitted()
        distributed.barrier(group)
        return _resume(run, device, progress, group, done)
    finally:
        run.release()


def _resume(run: Run, device: str | None, progress: TrainProgress | None, group: distributed.Group, done: int) -> Run:
    cfgs = run.info.configs
    data_cfg = from_dict(DataConfig, cfgs["data"])
    train_cfg = from_dict(TrainConfig, cfgs["train"])
    if device is not None:
        train_cfg = dataclasses.replace(train_cfg, device=device)
    distributed.check_batch(group, train_cfg.batch_size)
    dev = group.device or resolve_device(train_cfg.device)
    data = distributed.rank0_first(group, load_data, data_cfg)  # one download, not one per process
    net = build_run_model(run)
    net.load_state_dict(run.load_snapshot(done))
    return _fit(
        run, data, net, train_cfg, dev, first_epoch=done + 1, progress=progress or SilentTraining(), group=group
    )


def _fit(
    run: Run,
    data: ImageData,
    model: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    first_epoch: int,
    progress: TrainProgress,
    group: distributed.Group = distributed.SINGLE,
) -> Run:
    """``training.fit`` from ``first_epoch``, committing into ``run`` (rank 0 alone writes)."""
    fit(RunWriter(run), data, model, cfg, device, first_epoch, progress, group)
    return run


class RunWriter:
    """What ``training.fit`` writes, into a run folder: the snapshot, resume state, metrics line and then
    the manifest of each epoch (the epoch counts only after the last), and step snapshots."""

    def __init__(self, run: Run) -> None:
        self.run, self.records = run, run.metrics()

    def commit(self, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, rec: dict) -> None:
        run, t0 = self.run, time.perf_counter()
        save_tensors(run.snapshot_file(epoch), model.state_dict())
        tensors, info = optimizer_state(opt)
        tensors["rng.cpu"] = torch.get_rng_state()
        run.save_train_state(epoch, tensors, {**info, "epoch": epoch, "step": rec["step"]})
        rec["snapshot_s"] = round(time.perf_counter() - t0, 4)
        self.records.append(rec)
        run.write_metrics(self.records)
        run.write_manifest(epoch)
        run.prune_train_state(epoch)

    def step_snapshot(self, step: int, model: torch.nn.Module) -> None:
        save_tensors(self.run.step_snapshot_file(step), model.state_dict())

    def resume_state(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.run.load_train_state(epoch)


def plan_render(run: Run, cfg: RenderConfig = RenderConfig(), estimate: bool = False) -> dict[str, Any]:
    """What ``render_run`` will do, checked before any work: the layers, the moments, how many
    activation-maximization images, and with ``estimate`` only those not yet rendered with these
    settings and the expected seconds for them (``render.estimate_seconds``: a short timed pass)."""
    check_access(run)  # a model factory nobody vouched for is refused before anything is imported
    layers = select_layers(run.info.layers, cfg.layers)
    deep = is_deep(run.info.layers)
    chosen = moments(cfg.moments, run.snapshot_points(), deep=deep)
    for layer in layers:
        if cfg.channels and max(cfg.channels) >= layer.out_ch:
            raise ConfigError(
                f"channel {max(cfg.channels)} out of range for {layer.name} (it has "
                f"{layer.out_ch} channels: 0..{layer.out_ch - 1})"
            )
    images = len(chosen) * sum(len(render_stage.run_channels(run, layer, cfg)) for layer in layers)
    plan: dict[str, Any] = {"layers": layers, "moments": chosen, "images": images}
    if estimate:
        todo = render_stage.pending(run, layers, chosen, cfg)
        plan["images"], plan["estimate_s"] = todo, 0.0
        if todo:  # the estimate's timed pass costs a second or two: only when there is work
            full = render_stage.estimate_seconds(run, layers, chosen, cfg, resolve_device(cfg.device))
            plan["estimate_s"] = full * todo / max(1, images)
    return plan


def render_run(
    run: Run | str | Path, cfg: RenderConfig = RenderConfig(), progress: StageProgress = silent
) -> dict[str, Any]:
    """Filters at every snapshot, activation maximization at the moments ``cfg.moments`` chooses
    (``schedule.moments``), then the gallery.

    Returns a summary: the moments and layers rendered, images written, the settings set, the gallery path.
    Under torchrun (``featviz.distributed``) the processes share the activation-maximization work; rank 0
    draws the filters, merges the render index and builds the gallery; ``rank`` says which process this is.
    """
    run = Run.of(run)
    if not isinstance(cfg, RenderConfig):
        raise ConfigError(f"cfg must be a RenderConfig, got {type(cfg).__name__}")
    plan = plan_render(run, cfg)  # every check before any work, so a bad option leaves the run as it was
    group = distributed.setup(cfg.device)
    device = group.device or resolve_device(cfg.device)
    if group.main:
        run.hold("outputs")  # one render or analysis at a time (training may go on beside it)
    try:
        if group.main:
            run.merge_render_parts()  # what an interrupted multi-process render left: reused, not redone
        return _render(run, cfg, plan, group, device, progress)
    finally:
        run.release()


def _render(
    run: Run,
    cfg: RenderConfig,
    plan: dict[str, Any],
    group: distributed.Group,
    device: torch.device,
    progress: StageProgress,
) -> dict[str, Any]:
    layers, chosen, points = plan["layers"], plan["moments"], run.snapshot_points()
    distributed.barrier(group)
    # each verified once, used by both halves; the filters (rank 0) need every point, the rest only the moments
    snaps, bad = fitting(run, *run.load_points(points if cfg.filters and group.main else chosen))
    for p in chosen:  # a damaged snapshot of a requested moment fails here, before anything is written
        if p.id in bad:
            raise RunError(bad[p.id])
    written = (
        render_stage.draw_filters(run, layers, points, snaps, cfg.force, progress) if cfg.filters and group.main else 0
    )
    sid = render_stage.settings_set(run, cfg)
    if group.main:  # what this render will make, so an interruption leaves the set marked incomplete
        planned = {la.name: render_stage.run_channels(run, la, cfg) for la in layers}
        renderset.begin(run, sid, {p.id: planned for p in chosen})
    distributed.barrier(group)
    rendered = render_stage.maximize_layers(run, layers, chosen, cfg, device, progress, snaps, group)
    rendered = int(distributed.all_sum(group, torch.tensor(rendered)))
    distributed.barrier(group)  # every rank's images and part file are written
    if group.world > 1 and group.main:
        run.merge_render_parts()
    if group.main:
        renderset.finish(run, sid)
    gallery = build_gallery(run) if group.main else run.path / "gallery" / "index.html"
    distributed.finish(group)
    skipped = sorted(bad.items()) if cfg.filters else []
    return {
        "epochs": [p.epoch for p in chosen if p.epoch is not None],
        "moments": [p.label for p in chosen],
        "layers": [layer.name for layer in layers],
        "filter_files": written,
        "settings_set": sid,
        "am_images": rendered,
        "gallery": gallery,
        "device": str(device),
        "rank": group.rank,
        "processes": group.world,
        "skipped": [f"{pid} left out of the filter images: {msg}" for pid, msg in skipped],
    }


def render_reached(
    run: Run,
    cfg: RenderConfig = RenderConfig(filters=False),
    device: torch.device | None = None,
    rest: Callable[[float], bool] = lambda _s: True,
) -> int:
    """Activation maximization of ``cfg``'s layers at each ``auto`` moment of the planned run whose snapshot
    is committed, one (moment, layer) item at a time (for a run still training: ``featviz train
    --live-render``). After each item ``rest(seconds it took)`` is called; it returns False to stop.
    Images already rendered with these settings are reused. Returns how many images were rendered."""
    check_access(run)
    device = device or resolve_device(cfg.device)
    layers = select_layers(run.info.layers, cfg.layers)
    rendered = 0
    deep = is_deep(run.info.layers)
    sid = render_stage.settings_set(run, cfg)
    for moment in moments("auto", run.snapshot_points(), planned=run.epochs_planned, deep=deep):
        for layer in layers:  # one layer at a time, so each rest is short
            t0 = time.perf_counter()
            renderset.begin(run, sid, {moment.id: {layer.name: render_stage.run_channels(run, layer, cfg)}})
            n = render_stage.maximize_layers(run, [layer], [moment], cfg, device)
            renderset.finish(run, sid)
            rendered += n
            if not rest(time.perf_counter() - t0 if n else 0.0):
                return rendered
    return rendered


def analyze_run(
    run: Run | str | Path,
    probe_size: int | None = None,
    device: str = "auto",
    progress: StageProgress = silent,
    settings_set: str | None = None,
    control: Run | str | Path | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """``featviz.analyze.analyze`` (analysis.json and plots), then the gallery; returns the analysis.
    ``control``: a shuffled-label run of the same network and data, probed as the baseline; ``probe_size``
    (None: the scope's default) and ``full`` (a deep model's whole analysis): ``analyze.analysis_scope``."""
    run = Run.of(run)
    control = None if control is None else Run.of(control)
    if probe_size is not None and (isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 10):
        raise ConfigError(f"probe_size must be an integer >= 10 (validation images measured), got {probe_size!r}")
    check_access(run)
    with run.hold("outputs"):  # one render or analysis at a time
        result = analyze_stage.analyze(run, probe_size, device, progress, settings_set, control, full)
        build_gallery(run)
    return result

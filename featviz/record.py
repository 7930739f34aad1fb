"""Record any training loop into a featviz run: ``with featviz.record(model, ...) as rec``.

In: the caller's model (any ``nn.Module`` that a factory can rebuild), a few validation examples,
and two calls in the loop: ``rec.step(loss=...)`` after each optimizer step, ``rec.epoch(**metrics)``
after each epoch. Out: the run folder ``featviz train`` writes (run.json with provenance and the
traced conv layers, snapshots on the schedule, metrics.jsonl, manifest, the probe images), so
``featviz render``, ``analyze`` and ``gallery`` work on it unchanged.

Invariants: the recorder never changes the model, the optimizer or any random stream the loop uses:
it reads ``state_dict()``, runs the model only in eval mode without gradients (BatchNorm statistics
untouched) with every module's train/eval flag restored, and reads the data under a saved and restored
torch, Python and NumPy random state. Every write is atomic; an epoch counts once the manifest says so.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featviz.errors import ConfigError, RunError, one_line
from featviz.hooks import evaluating, input_kind
from featviz.layers import trace
from featviz.optvis.param import color_matrix_or_none
from featviz.probe import take_probe, untouched_rng
from featviz.run.fileio import check_name, save_tensors
from featviz.run.outputs import check_new_run, check_out_dir
from featviz.run.records import describe_run
from featviz.run.schema import DataInfo, RunInfo
from featviz.run.store import Run
from featviz.schedule import parse_schedule
from featviz.signature import Signature, first_difference, signature
from featviz.zoo import ModelSpec, build, logits_of, normalize_spec


def check_options(
    name: str | None, snapshots: str, probe_size: int, classes: list[str] | None, epochs: int | None
) -> tuple[str, tuple[int, ...]]:
    """The options of ``featviz.record`` that need neither model nor data, checked (the Lightning callback
    checks them when it is built, not once fit has started); returns the parsed snapshot schedule."""
    for what, v in (("probe_size", probe_size), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"featviz.record: {what} must be an integer >= 1, got {v!r}")
    if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)):
        raise ConfigError(f"featviz.record: classes must be a list of class names, got {classes!r}")
    if name is not None:
        check_name(name)
    return parse_schedule(snapshots)


# metrics.jsonl fields featviz writes itself: the recorder's, a snapshot's label and an imported checkpoint's file
OWN = ("epoch", "step", "wall_s", "label", "checkpoint")


class Recorder:
    """Writes a run from a loop it does not own. Use through ``featviz.record``; ``rec.run`` is the Run."""

    def __init__(
        self,
        model: nn.Module,
        name: str | None = None,
        *,
        out_dir: str | Path = "outputs",
        model_spec: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        data: Any = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        classes: list[str] | None = None,
        epochs: int | None = None,
        snapshots: str = "log",
        probe_size: int = 1000,
        force: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"featviz.record needs the torch.nn.Module being trained, got {type(model).__name__}")
        if data is None:
            raise ConfigError("featviz.record needs data=: a few validation images (a Dataset, DataLoader or tensor)")
        kind, nums = check_options(name, snapshots, probe_size, classes, epochs)
        self.model, self.kind, self.nums = model, kind, nums
        self.spec_text = model_spec or f"{type(model).__module__}:{type(model).__qualname__}"
        if self.spec_text.startswith("__main__:"):
            raise ConfigError(
                f"{type(model).__name__} is defined in the script being run; featviz rebuilds the model "
                "from an importable factory: pass model_spec='package.module:factory'"
            )
        self.kwargs, self.data, self.mean, self.std, self.classes = dict(model_kwargs or {}), data, mean, std, classes
        try:
            json.dumps(self.kwargs)
        except (TypeError, ValueError):
            raise ConfigError(
                "model_kwargs must be JSON values (numbers, strings, lists, dicts): run.json keeps them "
                "so the model can be rebuilt"
            ) from None
        self.epochs_planned, self.probe_size = epochs, probe_size
        self.name = name or f"{type(model).__name__.lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.out = check_out_dir(Path(out_dir))
        check_new_run(self.out, self.name, force)
        self.force = force
        self.run: Run | None = None
        self.closed = False
        self.step_count = self.epoch_count = 0
        self.tensors: Signature | None = None  # (name, shape, dtype) of the first snapshot: every later one matches
        self.losses: list[float | torch.Tensor] = []
        self.records: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.snapshot_s = 0.0  # seconds spent writing snapshots (the recorder's cost to the loop)
        self._step_files: list[Path] = []

    # -- the loop's calls
    def __enter__(self) -> "Recorder":
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)

    def start(self) -> Run:
        """Create the run: layers traced, the probe stored, the model as it is now committed as epoch 0.
        A recorder starts once (a second start would replace, with ``force``, the run it recorded): then a
        RunError, and nothing is touched. Every check comes before the run folder is created."""
        if self.run is not None:
            raise RunError(
                f"this recorder already recorded {self.run.path}; a recorder starts once: use a new "
                "featviz.record(...) for another run"
            )
        state = self.model.state_dict()
        check_materialized(state)
        with untouched_rng():
            x, y = take_probe(self.data, self.probe_size)
            info, raw = self._describe(x, y)
        self.tensors = signature(state)
        self.run = Run.create(self.out, self.name, info, force=self.force)  # holds the run's train lock
        try:
            self.run.save_probe(raw, y)
            self._commit({"epoch": 0, "step": 0, "train_loss": None, "wall_s": 0.0}, state)
        except BaseException:  # e.g. a full disk: the run stays interrupted, and is no longer locked
            self.closed = True
            self.run.release()
            raise
        return self.run

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """After each optimizer step: counts it, keeps ``loss`` (a number or a one-element tensor, kept
        on its device until the epoch ends: no GPU sync per step) for the epoch's mean, writes a step
        snapshot where the schedule has one."""
        run = self._live()
        if loss is not None:
            try:
                if torch.is_tensor(loss) and loss.numel() != 1:
                    raise ValueError
                loss = loss.detach() if torch.is_tensor(loss) else float(loss)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"rec.step(loss=...) takes one number or a one-element tensor, got {loss!r:.60}"
                ) from None
        step = self.step_count + 1
        if self._wants(step):  # before anything counts: a refused snapshot leaves the recorder as it was
            t = time.perf_counter()
            path = run.step_snapshot_file(step)
            save_tensors(path, self._state(f"step {step}"))
            self._step_files.append(path)
            self.snapshot_s += time.perf_counter() - t
        if loss is not None:
            self.losses.append(loss)
        self.step_count = step

    def epoch(self, **metrics: float) -> None:
        """After each epoch: snapshot, metrics line (the mean step loss and ``metrics``, e.g. val_acc=0.91),
        manifest. The epoch counts from here on."""
        bad = [k for k in metrics if k in OWN or (k == "train_loss" and self.losses)]
        if bad:  # checked before anything counts, so the loop can go on after fixing the call
            raise ConfigError(f"rec.epoch({bad[0]}=...): {bad[0]!r} is the recorder's own; name your metric otherwise")
        self._live()
        state = self._state(f"epoch {self.epoch_count + 1}")  # a model that changed: refused before it counts
        self.epoch_count += 1
        losses = [float(v) for v in self.losses]
        rec: dict[str, Any] = {
            "epoch": self.epoch_count,
            "step": self.step_count,
            "train_loss": sum(losses) / len(losses) if losses else metrics.pop("train_loss", None),
        }
        for key, val in metrics.items():
            try:
                rec[key] = None if val is None else float(val.item() if torch.is_tensor(val) else val)
            except (TypeError, ValueError, RuntimeError):
                warnings.warn(f"rec.epoch: {key}={val!r} is not a number; left out of metrics.jsonl", stacklevel=2)
        rec["wall_s"] = round(time.perf_counter() - self.t0, 3)
        end = self._live().step_snapshot_file(self.step_count)
        if end in self._step_files:  # the epoch snapshot is this step's snapshot
            end.unlink(missing_ok=True)
        self.losses, self.t0 = [], time.perf_counter()
        self._commit(rec, state)

    def close(self, failed: bool = False) -> None:
        """End the run: complete with the epochs recorded (a loop that stopped early, e.g. early stopping,
        ends the run there). A failed loop leaves every committed epoch valid and the run interrupted."""
        if self.run is None or self.closed:
            return
        run, self.closed = self.run, True
        try:
            if failed:
                run.discard_uncommitted()
                return  # run.json keeps "recording": the run reads as interrupted
            train = run.info.configs["train"]
            if self.epochs_planned is None or self.epoch_count < self.epochs_planned:
                train = {**train, "epochs": max(1, self.epoch_count)}  # the loop decided when to stop
            run.update_info(
                dataclasses.replace(run.info, recording=False, configs={**run.info.configs, "train": train})
            )
            run.write_manifest(self.epoch_count)
        finally:
            run.release()  # the next writer (render, a new recorder with force) may start

    # -- inside
    def _live(self) -> Run:
        if self.run is None:
            raise RunError("the recorder is not started: use it as `with featviz.record(...) as rec:`")
        if self.closed:
            raise RunError(f"the recorder of {self.run.path} is closed: the run ended with epoch {self.epoch_count}")
        return self.run

    def _wants(self, step: int) -> bool:
        if self.kind == "log":
            return self.epoch_count == 0 and step & (step - 1) == 0
        if self.kind == "every":
            return step % self.nums[0] == 0
        return step in self.nums

    def _state(self, where: str) -> dict[str, torch.Tensor]:
        """The model's state dict for the snapshot of ``where``; a ConfigError naming the tensor if its names,
        shapes or dtypes are not the first snapshot's (a layer replaced mid-loop: the run's snapshots must
        all load into one network, so that snapshot is not written and the committed epochs stay valid)."""
        state = self.model.state_dict()
        now = signature(state)
        change = first_difference(self.tensors or (), now) if now != self.tensors else None  # words only on a change
        if change:
            key, was, has = change
            raise ConfigError(
                f"the model changed since the first snapshot: {key} is {has}, was {was}; featviz records "
                f"one network, so the {where} snapshot was not written (epochs up to {self.epoch_count} "
                "stay valid)"
            )
        return state

    def _commit(self, rec: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        """Snapshot ``state`` as epoch ``rec["epoch"]``, append ``rec`` to the metrics, then the manifest."""
        t = time.perf_counter()
        run = self._live()
        save_tensors(run.snapshot_file(rec["epoch"]), state)
        self.records.append(rec)
        run.write_metrics(self.records)
        run.write_manifest(rec["epoch"])
        self.snapshot_s += time.perf_counter() - t

    def _describe(self, x: torch.Tensor, y: torch.Tensor) -> tuple[RunInfo, torch.Tensor]:
        """run.json for the model and probe ``x`` (model input), and the probe as uint8 pixels."""
        if x.dim() != 4:
            raise ConfigError(f"data gives images shaped {list(x.shape[1:])}; featviz needs [C, H, W] images")
        chans, size = int(x.shape[1]), int(x.shape[-1])
        if x.shape[-2] != size:
            raise ConfigError(
                f"data gives {x.shape[-2]}x{size} images; featviz renders square images: crop or resize "
                "the probe images to a square"
            )
        mean = list(self.mean) if self.mean is not None else [0.0] * chans
        std = list(self.std) if self.std is not None else [1.0] * chans
        if len(mean) != chans or len(std) != chans:
            raise ConfigError(f"mean and std need {chans} values, one per image channel")
        pixels = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        if self.mean is None and (float(pixels.min()) < -0.01 or float(pixels.max()) > 1.01):
            warnings.warn(
                "the data's images are not in [0, 1]: pass mean= and std= (your Normalize transform's) "
                "so featviz can show them and render in your model's input space",
                stacklevel=3,
            )
        raw = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        device, dtype = input_kind(self.model)
        try:
            with evaluating(self.model):
                out = logits_of(self.model(x[:2].to(device=device, dtype=dtype)))
        except Exception as e:  # noqa: BLE001 - a user's model can raise anything; say what failed
            raise ConfigError(
                f"your model cannot take the data's {chans}x{size}x{size} images: {one_line(e, 200)}"
            ) from None
        n_classes = int(out.shape[-1])
        spec = ModelSpec(normalize_spec(self.spec_text), self.kwargs, chans, n_classes)
        rebuilt = _check_rebuild(self.model, spec)
        classes = self.classes or list(getattr(self.data, "classes", [])) or [str(i) for i in range(n_classes)]
        color = color_matrix_or_none(raw) if chans > 1 else None
        data = DataInfo(
            name=str(getattr(self.data, "__class__", type(self.data)).__name__),
            classes=tuple(classes),
            image_channels=chans,
            size=size,
            n_val=int(len(raw)),
            mean=tuple(mean),
            std=tuple(std),
            color_matrix=None if color is None else tuple(tuple(r) for r in color),
        )
        schedule = self.kind + (":" + ",".join(map(str, self.nums)) if self.nums else "")
        meta = describe_run(
            self.name,
            {
                "data": {"name": data.name},
                "model": spec.as_dict(),
                "train": {"epochs": self.epochs_planned or 0, "snapshots": schedule},
            },
            data,
            trace(rebuilt, chans, size),  # the same network, on the CPU: not the live one
            self.model,
            device,
            source="record",
            recording=True,
        )
        return meta, raw


def check_materialized(state: dict[str, torch.Tensor]) -> None:
    """ConfigError if a tensor of the model's state has no values (the meta device: a model built for its
    shapes only), which no snapshot can store."""
    meta = next((k for k, t in state.items() if t.is_meta), None)
    if meta is not None:
        raise ConfigError(
            f"your model's {meta} is on the meta device (shapes without values); featviz records "
            "real weights: materialize the model first (e.g. model.to_empty(device=...), then "
            "initialize it)"
        )


def _check_rebuild(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The factory must build a network with the same tensors (names and shapes) as ``model``; returns it."""
    with untouched_rng():
        rebuilt_model = build(spec)
    rebuilt = rebuilt_model.state_dict()
    mine = model.state_dict()
    for key, t in mine.items():
        if key not in rebuilt or rebuilt[key].shape != t.shape:
            have = list(rebuilt[key].shape) if key in rebuilt else "no such tensor"
            raise ConfigError(
                f"model_spec {spec.factory} builds a different network: {key} is {list(t.shape)} in "
                f"your model, {have} in the rebuilt one; pass model_spec/model_kwargs that rebuild it"
            )
    extra = [k for k in rebuilt if k not in mine]
    if extra:
        raise ConfigError(
            f"model_spec {spec.factory} builds a different network: it has {extra[0]}, your model does not"
        )
    return rebuilt_model


def record(model: nn.Module, name: str | None = None, **options: Any) -> Recorder:
    """A ``Recorder`` for ``model`` (see its options); use it as a context manager around the loop."""
    return Recorder(model, name, **options)

"""A run's network, empty or at one snapshot: the one place a stage gets a model for a run.

A run's ``configs.model`` is either featviz's own ``ModelConfig`` (SmallCNN) or a ``zoo.ModelSpec``
(a ``factory`` key). Building a spec's model imports its factory, which runs code: ``allow`` records
what the user said on the command line (``--model``, ``--trust-run-code``) and ``check_access`` refuses,
before anything is imported, a factory the user did not name that is not a torchvision model builder
or featviz's own (``zoo.is_trusted``). Weights always come from the snapshots: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from featviz.config import DataConfig, ModelConfig, from_dict
from featviz.data import ImageData, load_data
from featviz.data.sources import generated_split
from featviz.errors import ConfigError, DataError
from featviz.images import Normalizer
from featviz.model import build_model
from featviz.run.schema import RunInfo
from featviz.run.store import Run
from featviz.signature import first_difference, signature
from featviz.zoo import ModelSpec, build, check_trust, normalize_spec


def spec_of(info: RunInfo) -> ModelSpec | None:
    """The run's model spec, or None for featviz's own SmallCNN."""
    cfg = info.model_config
    if "factory" not in cfg:
        return None
    return ModelSpec(
        factory=normalize_spec(cfg["factory"]),
        kwargs=dict(cfg.get("kwargs") or {}),
        in_channels=int(cfg["in_channels"]),
        num_classes=int(cfg["num_classes"]),
        pretrained=bool(cfg.get("pretrained", False)),
    )


def allow(run: Run, model: str | None = None, trust_run_code: bool = False) -> None:
    """What the user said about ``run``'s model code: ``--model SPEC`` and/or ``--trust-run-code``.
    Checked at once, so a refused run fails before any work."""
    run.model_access = (model, trust_run_code)
    check_access(run)


def check_access(run: Run) -> None:
    """ConfigError if building ``run``'s model would import a factory nobody vouched for, or if ``--model``
    names another model than the run's (it would otherwise be ignored)."""
    spec = spec_of(run.info)
    given = run.model_access[0]
    if given is not None and (spec is None or normalize_spec(given) != spec.factory):
        mine = spec.factory if spec is not None else "featviz's small CNN"
        raise ConfigError(
            f"this run's model is {mine}, not {given}; nothing was imported; --model only vouches "
            "for a run's own factory"
        )
    if spec is not None:
        check_trust(spec.factory, *run.model_access)


def build_run_model(run: Run, seed: int | None = None) -> nn.Module:
    """The run's network with a fresh init (``seed``: a pure function of it), after ``check_access``."""
    spec = spec_of(run.info)
    if spec is None:
        return build_model(from_dict(ModelConfig, run.info.model_config), seed=seed)
    check_access(run)
    return build(dataclasses.replace(spec, pretrained=False), seed=seed)  # the snapshots hold the weights: no download


def load_model_at(
    run: Run, epoch: int, device: torch.device, state: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """The run's network with the weights of ``epoch`` (``state``, if the caller has loaded them), eval mode."""
    model = build_run_model(run)
    model.load_state_dict(run.load_snapshot(epoch) if state is None else state)
    return model.to(device).eval()


def fitting(
    run: Run, snaps: dict[str, dict[str, torch.Tensor]], bad: dict[str, str] | None = None
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """``Run.load_points``'s (snaps, bad) with every snapshot whose tensors do not fit the run's network (a
    tensor missing, extra or of another shape: a model changed during the run) moved from ``snaps`` into
    ``bad`` (point id -> the reason, naming the snapshot): a caller treats it as it treats a damaged one.
    Builds the network once (no weights loaded) when there is any snapshot to check."""
    bad = dict(bad or {})
    if not snaps:
        return snaps, bad
    net = build_run_model(run).state_dict()
    good = {}
    for pid, state in snaps.items():
        why = difference(net, state)
        if why:
            bad[pid] = misfit(pid, why)
        else:
            good[pid] = state
    return good, bad


def difference(net: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """The first tensor whose name or shape differs between the run's network and a snapshot, in words."""
    change = first_difference(signature(net, dtypes=False), signature(state, dtypes=False))
    return None if change is None else f"{change[0]} is {change[2]} in it, {change[1]} in the run's network"


def misfit(point_id: str | int, why: str) -> str:
    """The one-line reason a snapshot is left out because its tensors do not fit the run's network."""
    name = point_id if isinstance(point_id, str) else f"epoch_{point_id:03d}"  # load_snapshots keys by epoch
    return (
        f"snapshots/{name}.safetensors does not fit the run's network: {why} (another network's weights: a "
        "model changed during the run?)"
    )


def probe_images(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's validation images (its stored probe, when it has one): normalized like training, with the
    channel statistics run.json records (float [N, C, H, W]), raw (uint8) and their labels (-1 where
    unknown). A generated set's training split is not rendered for them. Data that cannot be loaded is a
    FeatvizError saying why."""
    stored = run.load_probe()  # runs recorded from someone's loop keep theirs; trained runs reload the data
    if stored is not None:
        raw, labels = stored
    else:
        cfg = _data_config(run)
        got = _split(cfg, 1, None)
        if got is None:  # a data set on disk: loaded whole
            data = _dataset(cfg)
            got = data.val_x, data.val_y
        raw, labels = got
    return Normalizer(run.info.data.mean, run.info.data.std)(raw), raw, labels


PROBE_TRAIN = 1000  # training images a linear probe is fitted on (a seeded random subset of the training split)


@dataclasses.dataclass(frozen=True)
class ProbeTask:
    """Images with their true labels for linear probes: fitted on ``train``, scored on ``test`` (normalized
    float [N, C, H, W] and int64 labels), and where they came from, in words."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    source: str

    def to(self, device: torch.device | str) -> ProbeTask:
        """The same task with its images on ``device`` (labels stay on the CPU, where the probes are fitted)."""
        return dataclasses.replace(self, train_x=self.train_x.to(device), test_x=self.test_x.to(device))


def probe_task(run: Run, train: int = PROBE_TRAIN, test: int | None = None) -> ProbeTask:
    """The run's probe task. A trained run reloads its data set with the *true* labels (a shuffled-label
    control run is probed on the task it was denied): ``train`` training images and at most ``test``
    validation images (None = all), each a fixed random subset (seeds 0 and 1), so that a split stored in
    class order still gives every class. A recorded run keeps only its probe images: they are split in two
    within each class (alternately, in label order), one half to fit and one to test, ``test`` aside.
    DataError (one line) when the images or their labels are unavailable, or the test images hold fewer
    than two classes."""
    stored = run.load_probe()
    classes = len(run.info.data.classes) or int(getattr(run.info, "model_config", {}).get("num_classes", 0))
    if stored is not None:
        raw, labels = stored
        if bool((labels < 0).any()) or len(raw) < 20:
            raise DataError(f"run {run.name} keeps {len(raw)} probe images without labels for every one")
        norm = Normalizer(run.info.data.mean, run.info.data.std)
        order = torch.argsort(labels, stable=True)
        fit, held = order[0::2], order[1::2]
        task = ProbeTask(
            norm(raw[fit]),
            labels[fit],
            norm(raw[held]),
            labels[held],
            max(classes, int(labels.max()) + 1),
            f"the run's stored probe images, split within each class: {len(fit)} to fit, {len(held)} to test",
        )
    else:
        cfg = _data_config(run)
        val = _split(cfg, 1, None)
        if val is not None:  # a generated set: only the picked training images are rendered
            pick = torch.randperm(cfg.n_train, generator=torch.Generator().manual_seed(0))[:train]
            picked = _split(cfg, 0, tuple(pick.tolist()))
        else:  # a data set on disk: loaded whole
            data = _dataset(cfg)
            pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:train]
            val, picked = (data.val_x, data.val_y), (data.train_x[pick], data.train_y[pick])
        held = torch.randperm(len(val[0]), generator=torch.Generator().manual_seed(1))[:test]
        norm = Normalizer(run.info.data.mean, run.info.data.std)
        task = ProbeTask(
            norm(picked[0]),
            picked[1],
            norm(val[0][held]),
            val[1][held],
            classes,
            f"{len(pick)} training images to fit, {len(held)} validation images to test (true labels)",
        )
    if len(task.test_y.unique()) < 2:
        raise DataError(f"run {run.name}'s probe test images hold {len(task.test_y.unique())} class; probes need 2")
    return task


def _data_config(run: Run) -> DataConfig:
    """The run's data set with its true labels: a shuffled-label run's validation labels are the true ones
    anyway, and its probes are scored on the task it was denied."""
    data = run.info.configs.get("data") if isinstance(run.info.configs, dict) else None
    if not isinstance(data, dict):
        raise DataError(f"run {run.name} keeps no probe images and names no data set to load them from")
    return dataclasses.replace(from_dict(DataConfig, data), labels="true")


@functools.lru_cache(maxsize=2)
def _split(cfg: DataConfig, split: int, keep: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``data.generated_split``, kept for the next call with the same arguments (the validation split and
    the probes' training images, each generated once per process); None for a data set on disk."""
    return generated_split(cfg, split, None if keep is None else torch.tensor(keep, dtype=torch.long))


@functools.lru_cache(maxsize=1)
def _dataset(cfg: DataConfig) -> ImageData:
    """``cfg``'s data set, kept for the next call with the same config (rendering and analysis in one
    process load or generate it once)."""
    return load_data(cfg)

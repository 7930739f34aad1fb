"""Record a LightningModule's training into a featviz run: ``Trainer(callbacks=[FeatvizCallback(...)])``.

In: a ``FeatvizCallback`` with ``featviz.record``'s options, plus ``submodule`` ("net": record only
``pl_module.net``, whose factory ``model_spec`` must name). Defaults: the model is rebuilt from the
LightningModule's own class with ``model_kwargs=dict(pl_module.hparams)`` (``save_hyperparameters``); the
probe images come from the validation dataloader's dataset; the planned epochs are ``trainer.max_epochs``.
Out: the run ``featviz.record`` writes, on global rank 0 only: epoch 0 at ``on_train_start`` (after the
sanity check, before any optimizer step; the validation loaders exist only from then on), a step per
optimizer step (``trainer.global_step``: gradient accumulation counts once per step; the loss is the
step's loss), an epoch with ``trainer.callback_metrics``'s numbers (validation has already run) at
``on_train_epoch_end``, complete at ``on_fit_end`` (with the epochs done, so early stopping completes it),
interrupted on an exception. The callback never changes training: it only reads weights, and any read of
the data or the model runs under saved and restored random state (see ``featviz.record``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from featviz.errors import ConfigError
from featviz.probe import untouched_rng
from featviz.record import OWN, Recorder, check_options

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError:
    raise ConfigError("featviz.integrations.lightning needs Lightning: pip install 'featviz[lightning]'") from None

__all__ = ["FeatvizCallback"]


class FeatvizCallback(pl.Callback):
    """Writes a featviz run from ``Trainer.fit``; see the module docstring for the contract."""

    def __init__(
        self,
        name: str | None = None,
        *,
        out_dir: str | Path = "outputs",
        model_spec: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        data: Any = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        classes: list[str] | None = None,
        snapshots: str = "log",
        probe_size: int = 1000,
        force: bool = False,
        submodule: str | None = None,
    ) -> None:
        if submodule is not None and model_spec is None:
            raise ConfigError(
                f"FeatvizCallback(submodule={submodule!r}) needs model_spec='package.module:factory', "
                f"a factory that builds pl_module.{submodule}"
            )
        check_options(name, snapshots, probe_size, classes, None)  # here, not inside Trainer.fit
        self.submodule = submodule
        self.options: dict[str, Any] = dict(
            name=name,
            out_dir=out_dir,
            model_spec=model_spec,
            model_kwargs=model_kwargs,
            data=data,
            mean=mean,
            std=std,
            classes=classes,
            snapshots=snapshots,
            probe_size=probe_size,
            force=force,
        )
        self.rec: Recorder | None = None
        self._global_step = 0
        self._pending: list[torch.Tensor] = []  # batch losses since the last optimizer step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        opts = dict(self.options)
        if self.submodule is None:
            model: torch.nn.Module = pl_module
            if opts["model_spec"] is None and opts["model_kwargs"] is None:
                opts["model_kwargs"] = dict(pl_module.hparams)
                try:
                    json.dumps(opts["model_kwargs"])
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"{type(pl_module).__name__}'s hparams are not all JSON values; pass "
                        "FeatvizCallback(model_kwargs=...) that rebuild it"
                    ) from None
        else:
            try:
                model = pl_module.get_submodule(self.submodule)
            except AttributeError:
                raise ConfigError(f"{type(pl_module).__name__} has no submodule {self.submodule!r}") from None
        if opts["data"] is None:
            opts["data"] = _val_data(trainer, pl_module)
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        rec = Recorder(model, epochs=epochs, **opts)
        rec.start()
        self.rec, self._global_step, self._pending = rec, trainer.global_step, []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.rec is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and loss.numel() == 1:
            self._pending.append(loss.detach().reshape(()))
        stepped = trainer.global_step - self._global_step
        if stepped <= 0:  # accumulating gradients: no optimizer step yet
            return
        step_loss = None
        if self._pending:  # automatic optimization divides each batch's loss by the accumulation count
            total = torch.stack(self._pending).float()
            step_loss = total.sum() if pl_module.automatic_optimization else total.mean()  # stays on the device
        self._global_step, self._pending = trainer.global_step, []
        for i in range(stepped):  # several optimizers can step on one batch
            self.rec.step(loss=step_loss if i == 0 else None)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rec is None:
            return
        metrics: dict[str, float] = {}
        for key, val in trainer.callback_metrics.items():
            if key in OWN or (key == "train_loss" and self.rec.losses):
                continue  # the recorder's train_loss is the mean loss per optimizer step (else the one logged)
            if torch.is_tensor(val) and val.dim() == 0:
                metrics[key] = float(val.item())
            elif isinstance(val, (int, float)) and not isinstance(val, bool):
                metrics[key] = float(val)
        self.rec.epoch(**metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rec is not None:
            self.rec.epochs_planned = None  # complete with the epochs done (early stopping, max_steps)
            self.rec.close()
            self.rec = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.rec is not None:
            self.rec.close(failed=True)
            self.rec = None


def _val_data(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The validation data: the trainer's loaders, else the datamodule's or module's ``val_dataloader()``; the
    first loader."""
    loaders: Any = trainer.val_dataloaders
    if loaders is None:
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        if is_overridden("val_dataloader", source):
            with untouched_rng():
                loaders = source.val_dataloader()
    while isinstance(loaders, (list, tuple, dict)) and loaders:
        loaders = next(iter(loaders.values())) if isinstance(loaders, dict) else loaders[0]
    if loaders is None or isinstance(loaders, (list, tuple, dict)):
        raise ConfigError("FeatvizCallback found no validation dataloader: pass data= (a few validation images)")
    return loaders  # featviz.record reads a map-style loader's dataset, never the loader

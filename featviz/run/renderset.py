"""Render settings sets: every activation-maximization image belongs to exactly one.

A set is the settings that decide what an image looks like (steps, parametrization, transforms, lr,
seed, size, target, BatchNorm statistics). Its id, e.g. ``fourier-standard-256st-lr0.05-s0-32px-bnprobe``
(``-bnprobe``: BatchNorm statistics recomputed on the probe images), names the folder the
images live in (``renders/am/<id>/<layer>/epoch_XXX/``), so renders made with other settings never
overwrite or mix with these. ``analyze`` and the gallery use one set at a time: the one asked for,
else the default settings' set, else the only one there is.
"""

from __future__ import annotations

from typing import Any

from featviz.config import RenderConfig
from featviz.errors import ConfigError
from featviz.run.schema import RenderRecord, settings_set_of

KEYS = ("steps", "param", "transforms", "lr", "seed")


def am_settings(cfg: RenderConfig, size: int) -> dict[str, Any]:
    """What makes two activation-maximization renders the same (the reuse key). ``cfg.batchnorm`` must be
    resolved (``render.resolve_batchnorm``): "probe" is part of the key; "stored", what every render before
    the setting existed used, adds nothing, so those renders keep their set."""
    if cfg.batchnorm == "auto":
        raise ValueError("am_settings needs a resolved batchnorm (probe or stored), got 'auto'")
    out = {**{k: getattr(cfg.settings, k) for k in KEYS}, "size": size, "target": "response"}
    return {**out, "batchnorm": "probe"} if cfg.batchnorm == "probe" else out


def settings_sets(index: list[RenderRecord]) -> dict[str, dict[str, Any]]:
    """Every settings set in a render index: id -> its settings."""
    out: dict[str, dict[str, Any]] = {}
    for rec in index:
        if rec.kind == "am" and rec.settings_set is not None:
            out.setdefault(rec.settings_set, rec.settings or {})
    return out


def choose_settings_set(index: list[RenderRecord], size: int, requested: str | None = None) -> str | None:
    """The set to analyze or show: ``requested`` (must exist), else the default settings' set at the
    run's image ``size``, else the only set; None when there are no renders. Several sets and no
    default is a ConfigError that lists them."""
    sets = settings_sets(index)
    if requested:
        if requested not in sets:
            have = ", ".join(sorted(sets)) or "none (run featviz render first)"
            raise ConfigError(f"no renders with settings {requested!r}; this run has: {have}")
        return requested
    if not sets:
        return None
    for bn in ("probe", "stored"):  # the default settings, with either BatchNorm statistics
        default = settings_set_of(am_settings(RenderConfig(batchnorm=bn), size))
        if default in sets:
            return default
    if len(sets) == 1:
        return next(iter(sets))
    raise ConfigError(
        f"this run has several render settings sets and none is the default; choose one with "
        f"--settings-set: {', '.join(sorted(sets))}"
    )


def records_of(index: list[RenderRecord], sid: str | None) -> list[RenderRecord]:
    """The activation-maximization records (images and grids) of set ``sid``: one per (kind, layer,
    channel, moment), the newest (an earlier version's folder and the set's folder can both hold one)."""
    out: dict[tuple, RenderRecord] = {}
    for r in index:
        if r.kind in ("am", "am_grid") and sid is not None and r.settings_set == sid:
            out[(r.kind, r.layer, r.channel, r.point)] = r
    return list(out.values())

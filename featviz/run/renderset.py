"""Render settings sets: every activation-maximization image belongs to exactly one.

A set is the settings that decide what an image looks like (steps, parametrization, transforms, lr,
seed, size, target, BatchNorm statistics). Its id, e.g. ``fourier-standard-256st-lr0.05-s0-32px-bnprobe``
(``-bnprobe``: BatchNorm statistics recomputed on the probe images), names the folder the
images live in (``renders/am/<id>/<layer>/epoch_XXX/``), so renders made with other settings never
overwrite or mix with these. ``analyze`` and the gallery use one set at a time: the one asked for,
else the default settings' set, else the only one there is.
"""

from __future__ import annotations

import json
from typing import Any

from featviz.config import RenderConfig
from featviz.errors import ConfigError, FeatvizError
from featviz.run.fileio import json_text
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


# ----------------------------------------------------------------------------- complete or not
STATE = "render.json"  # renders/am/<set>/render.json: what the renders into the set planned, and whether they ended


def _state_rel(sid: str) -> str:
    return f"am/{sid}/{STATE}"


def read_state(run: Any, sid: str) -> dict[str, Any] | None:
    """A set's render state ({"planned": {moment id: {layer: [channels]}}, "finished": bool}), or None for a
    set rendered before featviz kept one (or one that cannot be read: treated as unknown, not incomplete)."""
    try:
        state = json.loads(run.read_file_bytes(f"renders/{_state_rel(sid)}"))
    except (OSError, ValueError, FeatvizError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("planned"), dict) and isinstance(state.get("finished"), bool)
    return state if ok else None


def begin(run: Any, sid: str, planned: dict[str, dict[str, list[int]]]) -> None:
    """Record, before any image is written, what a render into set ``sid`` will make (moment id -> layer ->
    channels), added to what earlier renders into it planned, and that it has not finished."""
    old = (read_state(run, sid) or {}).get("planned", {})
    merged = {m: {la: list(ch) for la, ch in layers.items()} for m, layers in old.items()}
    for m, layers in planned.items():
        for la, ch in layers.items():
            merged.setdefault(m, {})[la] = sorted(set(merged.get(m, {}).get(la, [])) | set(ch))
    run.write_artifact("renders", _state_rel(sid), json_text({"planned": merged, "finished": False}).encode())


def finish(run: Any, sid: str) -> None:
    """Mark the render into set ``sid`` finished (every image it planned is written)."""
    state = read_state(run, sid)
    if state is not None:
        run.write_artifact("renders", _state_rel(sid), json_text({**state, "finished": True}).encode())


def set_status(run: Any, index: list[RenderRecord], sid: str) -> dict[str, Any]:
    """What set ``sid`` holds and whether it is complete: ``moments`` and ``layers`` with images, the image
    count, and, for a set whose last render did not finish, ``complete`` False with ``missing`` (moment id ->
    layer -> how many planned images are absent). A set with no recorded state is reported complete
    (``known`` False): renders made before featviz kept one."""
    have: dict[str, dict[str, set[int]]] = {}
    for r in index:
        if r.kind == "am" and r.settings_set == sid and r.point and r.layer is not None and r.channel is not None:
            have.setdefault(r.point, {}).setdefault(r.layer, set()).add(r.channel)
    out: dict[str, Any] = {
        "moments": sorted(have),
        "layers": sorted({la for layers in have.values() for la in layers}),
        "images": sum(len(ch) for layers in have.values() for ch in layers.values()),
    }
    state = read_state(run, sid)
    if state is None:
        return {**out, "complete": True, "known": False}
    missing: dict[str, dict[str, int]] = {}
    for m, layers in state["planned"].items():
        for la, ch in layers.items():
            gone = len(set(ch) - have.get(m, {}).get(la, set()))
            if gone:
                missing.setdefault(m, {})[la] = gone
    return {**out, "complete": bool(state["finished"]) and not missing, "known": True, "missing": missing}

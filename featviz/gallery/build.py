"""Build RUN/gallery/index.html from the run's files alone (run.json, metrics, renders.jsonl).

No model is loaded. Every link is relative (``../renders/...``), so the page works from file://
and from ``featviz gallery RUN --serve``. Every string from the run goes through Jinja's
autoescaping (HTML) or ``tojson`` (data for the scripts), so a run or layer name cannot inject markup.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from jinja2 import Environment, PackageLoader, select_autoescape

from featviz.claims import claims, summary
from featviz.depth import shown_depth
from featviz.errors import ConfigError
from featviz.gallery.units import unit_href, unit_pages
from featviz.layers import default_layers, run_fields
from featviz.plots import available, training_curves
from featviz.run.fileio import json_text
from featviz.run.renderset import choose_settings_set, set_status, settings_sets
from featviz.run.schema import ConvLayer, RenderRecord
from featviz.run.store import Run
from featviz.schedule import label

OPEN_ALL_UP_TO = 6  # layers; a deeper model's page opens only its first section, so 10,000 tiles cost no layout
THUMB_PX = 64  # thumbnail width/height attributes when the settings do not say: they only fix the aspect ratio


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("featviz.gallery", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["json.dumps_function"] = json_text  # NaN as null: valid JSON for the page's scripts
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "separators": (",", ":")}  # 10,000 tiles: no spaces
    return env


def _bias_text(layer: ConvLayer, batchnorm: bool | None) -> str:
    if layer.biases:
        return f"{layer.biases:,} biases"
    if batchnorm:
        return "no biases (the BatchNorm after it shifts instead)"
    if batchnorm is False:  # e.g. a conv feeding a ReLU directly: worth saying, nothing can shift it
        return "no biases, and no BatchNorm after it: nothing shifts its output"
    return "no biases"  # the run does not say whether a BatchNorm follows


def _weights_text(layer: ConvLayer, batchnorm: bool | None) -> str:
    """What the layer's weight count means, for plain, grouped and depthwise convs alike.
    ``batchnorm``: whether a BatchNorm follows the conv (None: the run does not say)."""
    kh, kw = layer.kernel
    groups = layer.groups
    cin = layer.in_ch // groups
    weights = layer.weights if layer.weights is not None else layer.out_ch * cin * kh * kw
    text = (
        f"{layer.out_ch} filters x {cin} input channel{'s' if cin != 1 else ''} x {kh} x {kw} = "
        f"{weights:,} weights, {_bias_text(layer, batchnorm)}. "
    )
    if groups > 1 and groups == layer.in_ch:
        text += (
            f"Depthwise: one {kh}x{kw} kernel per channel (groups={groups}): each filter sees only its own "
            "input channel, so it mixes no channels. "
        )
    elif groups > 1:
        text += (
            f"Each filter sees {cin} of the {layer.in_ch} input channels (groups={groups}) and has "
            f"{cin * kh * kw:,} weights of its own: one {kh}x{kw} kernel per input channel it sees. "
        )
    else:
        text += f"Each filter has {cin * kh * kw:,} weights of its own: one {kh}x{kw} kernel per input channel. "
    return (
        text
        + "The count does not depend on the input size or the stride."
        + (" BatchNorm adds 2 trained numbers per channel." if batchnorm else "")
    )


def _faith(analysis: dict[str, Any] | None, name: str) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Per channel of ``name``: the AM image's percentile among the data and the top-9 strip (by channel),
    and the dead channels (analyze's one definition: never active on the probe images at the end)."""
    if not analysis:
        return {}, set()
    faith = analysis.get("faithfulness", {}).get(name, {})
    rows = {c["channel"]: c for c in faith.get("channels", [])} if isinstance(faith, dict) else {}
    dead = set(analysis.get("convergence", {}).get(name, {}).get("dead_channels", []))
    return rows, dead


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, None for anything else: the page reserves the space of a
    lazily loaded image, so the layout does not jump when it arrives."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _timing(run: Run) -> Callable[[RenderRecord], RenderRecord]:
    """The record with its step and label: records written before snapshots had steps carry only an epoch."""
    spe = run.steps_per_epoch() or 1
    step_of = run.step_of_epoch()

    def when(rec: RenderRecord) -> RenderRecord:
        if rec.step is not None and rec.label:
            return rec
        e = rec.epoch or 0
        step = step_of.get(e, e * spe)
        return dataclasses.replace(rec, step=step, label=label(step, spe) if e else "step 0 · init")

    return when


def _explain(layer: ConvLayer, model: dict[str, Any]) -> str:
    """The weights text plus the pool that follows (featviz's conv stack lists its pools in the model
    config; other models have none there)."""
    bn = layer.batchnorm if layer.batchnorm is not None else model.get("batchnorm")  # traced, or an older run's config
    pools = model.get("pools") or []
    pooled = layer.depth - 1 < len(pools) and pools[layer.depth - 1]
    return _weights_text(layer, bn) + (
        " The 2x2 max-pool after it has no weights: it only keeps the largest of each 4 values." if pooled else ""
    )


def _tiles(am: list[RenderRecord], analysis: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The activation-maximization grid of one layer: one tile per channel (its image at the last
    moment, linking to its unit page) and ``am_data``, what the slider needs, as one JSON blob per layer:
    each channel's files relative to the layer's common folder (``base``), so a 10,000-tile page stays
    a few MB and the browser parses that data only when a section's slider is used."""
    am_points = sorted({(r.step, r.label) for r in am})
    by = {(r.channel, r.step): r for r in am}
    channels = sorted({r.channel for r in am})
    files = [["../" + by[(c, s)].file if (c, s) in by else "" for s, _ in am_points] for c in channels]
    base = os.path.commonprefix([f for fs in files for f in fs if f]).rpartition("/")[0] + "/"
    faith, dead = _faith(analysis, name)
    tiles, data = [], []
    for c, fs in zip(channels, files):
        pct = None if faith.get(c, {}).get("am_percentile") is None else round(faith[c]["am_percentile"], 1)
        tiles.append({"channel": c, "dead": c in dead, "pct": pct, "src": fs[-1], "href": unit_href(name, c)})
        data.append({"channel": c, "srcs": [f[len(base) :] if f else "" for f in fs]})
    return {"am_labels": [lab for _, lab in am_points], "tiles": tiles, "am_data": {"base": base, "tiles": data}}


def _depths(
    run: Run, index: list[RenderRecord], analysis: dict[str, Any] | None = None, sid: str | None = None
) -> list[dict[str, Any]]:
    when = _timing(run)
    model = run.info.model_config
    traced = (analysis or {}).get("depth") if isinstance((analysis or {}).get("depth"), dict) else {}
    chosen = {la.name for la in default_layers(run.info.layers)}
    rf_of = dict(zip([layer.name for layer in run.info.layers], run_fields(run.info)))
    size = run.info.data.size
    by_layer: dict[str | None, list[RenderRecord]] = {}
    for r in index:  # one pass over the index, not one per layer (10,000s of records for a ResNet)
        by_layer.setdefault(r.layer, []).append(r)
    out = []
    for layer in run.info.layers:
        name = layer.name
        recs = [when(r) for r in by_layer.get(name, [])]
        filters = sorted((r for r in recs if r.kind == "filters"), key=lambda r: r.step or 0)
        learned = {r.step: r for r in recs if r.kind == "filters_learned"}
        am = [r for r in recs if r.kind == "am" and r.settings_set == sid]
        extra = {r.kind: "../" + r.file for r in recs if r.kind.endswith(("_strip", "_gif"))}
        rf = rf_of[name]
        where = traced.get(name) or {}  # an older run's layers lack it; its analysis may have it
        out.append(
            {
                "name": name,
                "depth": layer.depth,
                "shown": shown_depth(layer, where),
                "branch": layer.branch or bool(where.get("branch")),
                "stage": layer.stage or where.get("stage"),
                "default": name in chosen,
                "filters": layer.out_ch,
                "explain": _explain(layer, model),
                "rf": rf,
                "rf_note": (f"larger than the {size} px image" if rf and rf > size else f"of {size} px"),
                "rf_at_least": layer.rf_exceeds,  # traced fields that reach the probe's border
                "filter_px": _png_size(run.path / filters[-1].file) if filters else None,
                "filter_srcs": ["../" + r.file for r in filters],
                "filter_labels": [r.label for r in filters],
                "learned_srcs": ["../" + learned[r.step].file if r.step in learned else "" for r in filters],
                **_tiles(am, analysis, name),
                "strip": extra.get("filters_strip"),
                "gif": extra.get("filters_gif"),
                "learned_strip": extra.get("filters_learned_strip"),
                "learned_gif": extra.get("filters_learned_gif"),
            }
        )
    return out


def gallery_settings_set(
    index: list[RenderRecord], size: int, analysis: dict[str, Any] | None, requested: str | None = None
) -> str | None:
    """The render settings set the gallery shows: ``requested`` (must exist), else the one the analysis
    used, else ``renderset.choose_settings_set``'s choice, else (several sets, none the default) the first by name."""
    if requested:
        return choose_settings_set(index, size, requested)
    sets = settings_sets(index)
    if analysis and analysis.get("settings_set") in sets:
        return analysis["settings_set"]
    try:
        return choose_settings_set(index, size)
    except ConfigError:
        return sorted(sets)[0]


def build_gallery(run: Run, settings_set: str | None = None, live: bool = False) -> str:
    """Write RUN/gallery/index.html (+ curves.png) and return the index path.

    ``settings_set``: the activation-maximization settings set to show (see ``gallery_settings_set``). ``live``: the
    page polls ``live.json`` and applies new snapshots without a reload (``featviz.gallery.live``)."""
    metrics = run.metrics(strict=False)
    index = run.render_index()
    analysis = run.read_analysis()
    sid = gallery_settings_set(index, run.info.data.size, analysis, settings_set)
    if metrics:
        run.write_artifact("gallery", "curves.png", training_curves(metrics))
    last = metrics[-1] if metrics else {}
    sets = settings_sets(index)
    am_settings = sets.get(sid) if sid else None
    if analysis and analysis.get("settings_set", sid) != sid:
        analysis = {k: v for k, v in analysis.items() if k not in ("faithfulness",)}  # r belongs to another set
    plots = [f"../analysis/{k}.png" for k in available(analysis)] if analysis else []
    depths = _depths(run, index, analysis, sid)
    if live:  # a live page's unit pages come with the render after training: no tile links to one yet
        for d in depths:
            for t in d["tiles"]:
                t["href"] = None
    status = set_status(run, index, sid) if sid else None
    points = run.snapshot_points()
    labels, order = {p.id: p.label for p in points}, {p.id: i for i, p in enumerate(points)}
    if status:  # the moments by their labels, in the order of training, for the page
        held = sorted(status["moments"], key=lambda m: order.get(m, len(order)))
        status = {**status, "moment_labels": [labels.get(m, m) for m in held]}
    for i, d in enumerate(depths):
        d["open"] = i == 0 or len(depths) <= OPEN_ALL_UP_TO
    html = (
        _env()
        .get_template("index.html.j2")
        .render(
            run=run.info,
            name=run.name,
            last=last,
            metrics=metrics,
            depths=depths,
            thumb_px=int((am_settings or {}).get("size") or THUMB_PX),
            reading=analysis.get("reading") if analysis else None,
            summary=summary(analysis) if analysis and "filter_updates" in analysis else None,
            claims=claims(analysis) if analysis and "filter_updates" in analysis else None,
            scope_note=((analysis or {}).get("scope") or {}).get("left_out"),
            plots=plots,
            has_curves=bool(metrics),
            am_settings=am_settings,
            settings_set=sid,
            set_status=status,
            other_sets=sorted(x for x in sets if x != sid),
            live=live,
            epochs_done=run.epochs_done,
            complete=run.complete,
        )
    )
    path = str(run.write_artifact("gallery", "index.html", html.encode()))
    if not live:  # a live page is rebuilt while training: its unit pages come with the render after it
        unit = _env().get_template("unit.html.j2")
        am = [r for r in index if r.kind == "am" and r.settings_set == sid]
        unit_pages(run, am, analysis, lambda page: unit.render(**page), _timing(run))
    return path

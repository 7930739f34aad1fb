"""Build RUN/gallery/index.html from the run's files alone (run.json, metrics, renders.jsonl).

No model is loaded. Every link is relative (``../renders/...``), so the page works from file://
and from ``featviz gallery RUN --serve``. Every string from the run goes through Jinja's
autoescaping (HTML) or ``tojson`` (data for the scripts), so a run or layer name cannot inject markup.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from featviz.errors import ConfigError
from featviz.metrics import theoretical_receptive_fields
from featviz.plots import available, training_curves
from featviz.renderset import am_sets, choose_set, record_set
from featviz.schedule import label
from featviz.store import Run


def _env() -> Environment:
    return Environment(loader=PackageLoader("featviz.gallery", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def _weights_text(layer: dict[str, Any], batchnorm: bool) -> str:
    kh, kw = layer["kernel"]
    cin = layer["in_ch"] // layer.get("groups", 1)
    bias = f"{layer['biases']:,} biases" if layer["biases"] else "no biases (the BatchNorm after it shifts instead)"
    return (f"{layer['out_ch']} filters x {cin} input channels x {kh} x {kw} = {layer['weights']:,} weights, "
            f"{bias}. Each filter has {cin * kh * kw:,} weights of its own: one {kh}x{kw} kernel per input channel. "
            "The count does not depend on the input size or the stride."
            + (" BatchNorm adds 2 trained numbers per channel." if batchnorm else ""))


def _faith(analysis: dict[str, Any] | None, name: str) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Per channel of ``name``: r and the top-9 strip (by channel), and the dead channels."""
    if not analysis:
        return {}, set()
    faith = analysis.get("faithfulness", {}).get(name, {})
    rows = {c["channel"]: c for c in faith.get("channels", [])} if isinstance(faith, dict) else {}
    dead = set(analysis.get("convergence", {}).get(name, {}).get("dead_channels", []))
    dead |= {c for c, row in rows.items() if row.get("r") is None}
    return rows, dead


def _timing(run: Run) -> Any:
    """record -> {"step", "label"}: records written before snapshots had steps carry only an epoch."""
    spe = run.steps_per_epoch() or 1
    step_of = run.step_of_epoch()

    def when(rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("step") is not None and rec.get("label"):
            return {"step": rec["step"], "label": rec["label"]}
        e = rec.get("epoch") or 0
        step = step_of.get(e, e * spe)
        return {"step": step, "label": label(step, spe) if e else "step 0 · init"}
    return when


def _depths(run: Run, index: list[dict[str, Any]], analysis: dict[str, Any] | None = None,
            sid: str | None = None) -> list[dict[str, Any]]:
    when = _timing(run)
    model = run.meta["configs"]["model"]
    rfs = theoretical_receptive_fields(model["kernels"], model["strides"], model["pools"])
    size = run.meta["data"]["size"]
    out = []
    for layer in run.meta["layers"]:
        name, d = layer["name"], layer["depth"]
        recs = [{**r, **when(r)} for r in index if r.get("layer") == name]
        filters = sorted((r for r in recs if r["kind"] == "filters"), key=lambda r: r["step"])
        learned = {r["step"]: r for r in recs if r["kind"] == "filters_learned"}
        am = [r for r in recs if r["kind"] == "am" and record_set(r) == sid]
        am_points = sorted({(r["step"], r["label"]) for r in am})
        am_steps = [s for s, _ in am_points]
        channels = sorted({r["channel"] for r in am})
        by = {(r["channel"], r["step"]): r for r in am}
        faith, dead = _faith(analysis, name)
        tiles = [{"channel": c, "dead": c in dead,
                  "r": None if faith.get(c, {}).get("r") is None else round(faith[c]["r"], 2),
                  "top": "../" + faith[c]["file"] if c in faith else "",
                  "srcs": ["../" + by[(c, s)]["file"] if (c, s) in by else "" for s in am_steps],
                  "acts": [round(by[(c, s)].get("activation", 0.0), 4) if (c, s) in by else None for s in am_steps]}
                 for c in channels]
        extra = {r["kind"]: "../" + r["file"] for r in recs if r["kind"].endswith(("_strip", "_gif"))}
        rf = rfs[d - 1] if d - 1 < len(rfs) else None
        out.append({
            "name": name, "depth": d, "filters": layer["out_ch"],
            "explain": _weights_text(layer, model["batchnorm"]) + (" The 2x2 max-pool after it has no weights: it only "
                                                                  "keeps the largest of each 4 values." if
                                                                  model["pools"][d - 1] else ""),
            "rf": rf, "rf_note": (f"larger than the {size} px image" if rf and rf > size else f"of {size} px"),
            "filter_srcs": ["../" + r["file"] for r in filters], "filter_labels": [r["label"] for r in filters],
            "learned_srcs": ["../" + learned[r["step"]]["file"] if r["step"] in learned else "" for r in filters],
            "am_labels": [lab for _, lab in am_points], "tiles": tiles,
            "strip": extra.get("filters_strip"), "gif": extra.get("filters_gif"),
            "learned_strip": extra.get("filters_learned_strip"), "learned_gif": extra.get("filters_learned_gif"),
        })
    return out


def gallery_set(index: list[dict[str, Any]], size: int, analysis: dict[str, Any] | None,
                requested: str | None = None) -> str | None:
    """The render settings set the gallery shows: ``requested`` (must exist), else the one the analysis
    used, else ``renderset.choose_set``'s choice, else (several sets, none the default) the first by name."""
    if requested:
        return choose_set(index, size, requested)
    sets = am_sets(index)
    if analysis and analysis.get("renders") in sets:
        return analysis["renders"]
    try:
        return choose_set(index, size)
    except ConfigError:
        return sorted(sets)[0]


def build_gallery(run: Run, renders: str | None = None, live: bool = False) -> str:
    """Write RUN/gallery/index.html (+ curves.png) and return the index path.

    ``renders``: the activation-maximization settings set to show (see ``gallery_set``). ``live``: the
    page polls ``live.json`` and applies new snapshots without a reload (``featviz.gallery.live``)."""
    metrics = run.metrics(strict=False)
    index = run.render_index()
    analysis = run.read_analysis()
    sid = gallery_set(index, int(run.meta["data"]["size"]), analysis, renders)
    if metrics:
        run.write_artifact("gallery", "curves.png", training_curves(metrics))
    last = metrics[-1] if metrics else {}
    sets = am_sets(index)
    am_settings = sets.get(sid) if sid else None
    if analysis and analysis.get("renders", sid) != sid:
        analysis = {k: v for k, v in analysis.items() if k not in ("faithfulness",)}  # r belongs to another set
    plots = [f"../analysis/{k}.png" for k in available(analysis)] if analysis else []
    html = _env().get_template("index.html.j2").render(
        run=run.meta, name=run.name, last=last, metrics=metrics, depths=_depths(run, index, analysis, sid),
        reading=analysis.get("reading") if analysis else None, plots=plots,
        has_curves=bool(metrics), am_settings=am_settings, am_set=sid,
        other_sets=sorted(x for x in sets if x != sid), live=live, epochs_done=run.epochs_done, complete=run.complete,
    )
    return str(run.write_artifact("gallery", "index.html", html.encode()))

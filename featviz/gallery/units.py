"""One static page per unit: RUN/gallery/units/<layer>/<channel>.html, the gallery's permalinks.

A page shows the unit's activation-maximization image at every rendered moment, its top-9 validation crops
and numbers, and its wiring from analyze (analysis/wiring.json, ``featviz.wiring``): its strongest inputs
with each input's own image and the k x k kernel between them, at every snapshot (a slider), the step it
wired at, its strongest outputs, the expanded weights to two layers down and its NMF glyph. Like the index,
it is built from the run's files alone; every link is relative and every string is escaped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable
from urllib.parse import quote

from featviz.depth import shown_depth
from featviz.errors import RunError
from featviz.run.fileio import plain_rel
from featviz.run.schema import RenderRecord
from featviz.run.store import Run
from featviz.wiring import page_units

TO_RUN = "../../../"  # from gallery/units/<layer>/ back to the run folder


def unit_folder(layer: str) -> str:
    """The folder of a layer's unit pages under gallery/units/: the layer's name when it is a plain file
    name (module names are), else ``layer-`` and a hash of it (a hand-edited run.json cannot choose a path)."""
    if plain_rel(layer) and "/" not in layer:
        return layer
    return "layer-" + hashlib.sha256(layer.encode()).hexdigest()[:12]


def unit_href(layer: str, channel: int, up: str = "") -> str:
    """The link to a unit page from the gallery folder (``up``: the path from the linking page to it)."""
    return f"{up}units/{quote(unit_folder(layer), safe='')}/{channel}.html"


def read_wiring(run: Run) -> dict[str, Any] | None:
    """analysis/wiring.json, or None when analyze has not written it (or it cannot be read)."""
    try:
        data = json.loads(run.read_file_bytes("analysis/wiring.json"))
    except (RunError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("layers"), dict) else None


def _am_index(am: list[RenderRecord]) -> dict[tuple[str, int], list[RenderRecord]]:
    out: dict[tuple[str, int], list[RenderRecord]] = {}
    for r in am:
        if r.layer is not None and r.channel is not None:
            out.setdefault((r.layer, r.channel), []).append(r)
    for recs in out.values():
        recs.sort(key=lambda r: r.step or 0)
    return out


def _numbers(analysis: dict[str, Any] | None, layer: str, channel: int) -> dict[str, Any]:
    """The unit's numbers from analysis.json: where its image ranks among the data, its rotation from init
    at the last epoch, whether it is dead, and its top-9 strip."""
    if not analysis:
        return {}
    out: dict[str, Any] = {}
    faith = analysis.get("faithfulness", {}).get(layer, {})
    for row in faith.get("channels", []) if isinstance(faith, dict) else []:
        if row.get("channel") == channel:
            out["pct"] = row.get("am_percentile")
            out["top"] = TO_RUN + row["file"] if isinstance(row.get("file"), str) else None
    rot = analysis.get("filter_updates", {}).get(layer, {}).get("filter_rotation")
    if isinstance(rot, list) and channel < len(rot):
        out["rotation"] = rot[channel]
    conv = analysis.get("convergence", {}).get(layer, {})
    if isinstance(conv, dict) and "dead_channels" in conv:
        out["dead"] = channel in conv["dead_channels"]
    return out


def _entry(
    layer: str | None,
    index: int,
    norm: Any,
    kernel: Any,
    thumbs: Callable[[str, int], str | None],
    labels: list[str] | None,
    paged: Callable[[str, int], bool],
) -> dict[str, Any]:
    """One input or output: its unit (layer, channel), its picture and the link to its page where it has them,
    its kernel. ``layer`` None: a channel of the image (``labels``: their names) or, with ``labels`` None, of
    an input that is no single layer's output (a residual sum)."""
    out: dict[str, Any] = {"norm": norm, "kernel": kernel} if kernel is not None else {}
    if layer is None:
        image = labels is not None and index < len(labels)
        return {**out, "name": labels[index] if image else f"input channel {index}"}  # type: ignore[index]
    link = {"href": f"../../{unit_href(layer, index)}"} if paged(layer, index) else {}
    return {**out, "name": f"{layer} · {index}", "src": thumbs(layer, index), **link}


def unit_pages(
    run: Run,
    am: list[RenderRecord],
    analysis: dict[str, Any] | None,
    render: Callable[[dict[str, Any]], str],
    when: Callable[[RenderRecord], RenderRecord],
) -> int:
    """Write every unit page (``wiring.page_units``); returns how many. ``am``: the shown settings set's
    activation-maximization records; ``render``: the page template; ``when``: a record with its step and label."""
    wiring = read_wiring(run)
    by_unit = _am_index([when(r) for r in am])
    last = {key: recs[-1] for key, recs in by_unit.items()}

    def thumb(layer: str, channel: int) -> str | None:
        rec = last.get((layer, channel))
        return TO_RUN + rec.file if rec else None

    colours = ["red", "green", "blue"] if run.info.data.image_channels == 3 else ["grey"]
    labels = [f"{c} channel of the image" for c in colours]
    depth = {la.name: shown_depth(la) for la in run.info.layers}
    chosen = page_units(run.info.layers)
    for layer, c in by_unit:  # every rendered tile links to its page, also one rendered with --layers/--channels
        chosen.setdefault(layer, []).append(c)
    pages = {(layer, c) for layer, cs in chosen.items() for c in cs}

    def paged(layer: str, channel: int) -> bool:
        return (layer, channel) in pages

    written = 0
    for layer_info in run.info.layers:
        name = layer_info.name
        if name not in chosen:
            continue
        channels = sorted(set(chosen[name]))
        wl = (wiring or {}).get("layers", {}).get(name)
        for c in channels:
            unit = (wl or {}).get("units", {}).get(str(c))
            page = {
                "run": run.name,
                "layer": name,
                "depth": shown_depth(layer_info),
                "channel": c,
                "channels": layer_info.out_ch,
                "index_href": f"../../index.html#depth-{layer_info.depth}",  # the section anchor: forward order
                "moments": [
                    {"src": TO_RUN + r.file, "label": r.label, "act": r.activation} for r in by_unit.get((name, c), [])
                ],
                "numbers": _numbers(analysis, name, c),
                "prev": unit_href(name, c - 1, "../../") if c > 0 and c - 1 in channels else None,
                "next": unit_href(name, c + 1, "../../") if c + 1 in channels else None,
            }
            if unit is not None and wl is not None:
                page["wiring"] = _wiring_data(wl, unit, wiring, thumb, labels, depth, paged)
            run.write_artifact("gallery", f"units/{unit_folder(name)}/{c}.html", render(page).encode())
            written += 1
    return written


def _wiring_data(
    wl: dict[str, Any],
    unit: dict[str, Any],
    wiring: dict[str, Any],
    thumb: Callable[[str, int], str | None],
    labels: list[str],
    depth: dict[str, int],
    paged: Callable[[str, int], bool],
) -> dict[str, Any]:
    """What the page's script draws: the inputs at each snapshot, the outputs and expanded inputs at the end."""
    source = wl.get("source")  # a layer; "" the input image; None no single layer (a residual sum)
    src_layer = source or None
    names = labels if source == "" else None
    # each snapshot's inputs as [channel, norm, kernel]; who each input channel is, once per page
    inputs = [[[i, n, k] for i, n, k in at] for at in unit.get("inputs", [])]
    seen = sorted({i for at in inputs for i, _, _ in at})
    input_units = {str(i): _entry(src_layer, i, None, None, thumb, names, paged) for i in seen}
    outputs = {
        r: [_entry(r, o, n, k, thumb, None, paged) for o, n, k in rows] for r, rows in unit.get("outputs", {}).items()
    }
    two = wl.get("expanded_source")
    expanded = [_entry(two, i, n, k, thumb, None, paged) for i, n, k in unit.get("expanded", [])] if two else []
    direct = [abs(v) for at in inputs for _, _, k in at for v in k if v is not None]
    direct += [abs(v) for rows in outputs.values() for e in rows for v in e["kernel"] if v is not None]
    return {
        "k": wiring.get("k"),
        "steps": wiring.get("steps", []),
        "labels": wiring.get("labels", []),
        "source": source,
        "source_depth": depth.get(source) if source else None,
        "reason": wl.get("reason"),
        "kernel": wl.get("kernel"),
        "reader_kernels": wl.get("reader_kernels", {}),
        "inputs": inputs,
        "input_units": input_units,
        "wired_at": unit.get("wired_at"),
        "share_init": unit.get("share_init"),
        "share_final": unit.get("share_final"),
        "outputs": outputs,
        "expanded_source": two,
        "expanded_reason": wl.get("expanded_reason"),
        "expanded_shape": wl.get("expanded_shape"),
        "expanded": expanded,
        "scale": max(direct, default=1.0) or 1.0,
        "expanded_scale": max((abs(v) for e in expanded for v in e["kernel"] if v is not None), default=1.0) or 1.0,
        "glyph": unit.get("glyph"),
        "glyph_shape": wl.get("glyph_shape"),
    }

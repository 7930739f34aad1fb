"""Plots of analysis.json and of the training metrics (matplotlib): data in, PNG and SVG bytes out.
No files, no model."""

from __future__ import annotations

import io
from typing import Any, Callable

from featviz.depth import analysed_depth

DEPTH_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MANY = 8  # layers: more than this, a plot over steps is a layer x step heatmap (one row per layer), not lines


def _figure(
    draw: Callable[[Any], None],
    width: float = 5.2,
    height: float = 3.4,
    ncols: int = 1,
    formats: tuple[str, ...] = ("png", "svg"),
) -> dict[str, bytes]:
    """Draw on one axis (or a list of ``ncols`` axes) and return the figure encoded in ``formats``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), dpi=100)
    draw(axes)
    for ax in axes if ncols > 1 else [axes]:
        if not ax.images:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out


def training_curves(metrics: list[dict[str, Any]]) -> bytes:
    """Loss and accuracy, train and validation, per epoch, as PNG bytes (epoch 0 has no training numbers)."""

    def draw(axes: Any) -> None:
        ep = [r["epoch"] for r in metrics]
        for ax, kind, ylabel in ((axes[0], "loss", "cross-entropy"), (axes[1], "acc", "accuracy")):
            for key, style in ((f"train_{kind}", "-o"), (f"val_{kind}", "-s")):
                pts = [(e, r[key]) for e, r in zip(ep, metrics) if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), style, ms=3, label=key.replace("_", " "))
            ax.set(xlabel="epoch", ylabel=ylabel, title="loss" if kind == "loss" else "accuracy")
            ax.legend(frameon=False)
        axes[1].set_ylim(0, 1.02)

    return _figure(draw, width=9, height=3.2, ncols=2, formats=("png",))["png"]


def _step_axis(ax: Any, a: dict[str, Any]) -> None:
    """x = optimizer step on a log scale (linear below 1, so the init at step 0 shows), epoch ends dotted."""
    spe = a.get("steps_per_epoch")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)  # steps are never negative: no "-10^1" ticks from the axis margins
    if spe:
        for e in a["epochs"][1:]:
            ax.axvline(e * spe, color="#ddd", lw=0.6, zorder=0)
    ax.set_xlabel("optimizer step (log scale; grey lines: epoch ends)")


def _row_label(a: dict[str, Any], name: str) -> str:
    """'d7 layer2.0.conv2' (the traced depth, 'b' for a branch) for a heatmap row."""
    info = (a.get("depth") or {}).get(name) or {}
    return f"{'b' if info.get('branch') else 'd'}{analysed_depth(a, name)} {name}"


def _layer_rows(
    ax: Any,
    a: dict[str, Any],
    names: list[str],
    data: Any,
    limits: tuple[float | None, float | None],
    ticks: list[int],
    labels: list[str],
    **image: Any,
) -> Any:
    """``data`` (one row per layer of ``names``) as an image on ``ax``, rows labelled by ``_row_label``."""
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=limits[0], vmax=limits[1], **image)
    ax.set_yticks(range(len(names)), [_row_label(a, n) for n in names], fontsize=6)
    ax.set_xticks(ticks, labels, fontsize=7)
    return im


def _heatmap(
    a: dict[str, Any],
    rows: list[tuple[str, list[float | None]]],
    steps: list[int],
    title: str,
    label: str,
    limits: tuple[float | None, float | None] = (None, None),
) -> dict[str, bytes]:
    """One row per layer (forward order), one column per snapshot, colour = the value: for more than ``MANY``
    layers, where one line per layer cannot be told apart. Columns are snapshots in order, labelled by step."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in vals] for _, vals in rows], dtype=float)

    def draw(ax: Any) -> None:
        ticks = sorted({0, len(steps) - 1, *range(0, len(steps), max(1, len(steps) // 6))})
        names = [n for n, _ in rows]
        im = _layer_rows(ax, a, names, data, limits, ticks, [str(steps[i]) for i in ticks], interpolation="nearest")
        ax.set(xlabel="snapshot (optimizer step)", title=title)
        ax.figure.colorbar(im, ax=ax, label=label, fraction=0.04, pad=0.02)

    return _figure(draw, width=6.4, height=1.4 + 0.16 * len(rows))


def weight_change(a: dict[str, Any]) -> dict[str, bytes]:
    """Rotation from init (solid) and change from the previous snapshot (dashed) per layer vs step."""
    by = a.get("updates_by_step")
    spe = a.get("steps_per_epoch") or 1
    if len(a["layers"]) > MANY:
        steps = by[a["layers"][0]]["steps"] if by else [e * spe for e in a["epochs"]]
        rows = [
            (n, by[n]["rotation_from_init"] if by else a["filter_updates"][n]["rotation_from_init"])
            for n in a["layers"]
        ]
        return _heatmap(a, rows, steps, "Filter updates: rotation from init, 1 - cos(W_t, W_0)", "1 - cos")

    def draw(ax: Any) -> None:
        for i, name in enumerate(a["layers"]):
            c = DEPTH_COLORS[i % len(DEPTH_COLORS)]
            if by:
                u = by[name]
                ax.plot(u["steps"], u["rotation_from_init"], "-o", ms=2.5, color=c, label=f"{name}: 1 - cos(W_t, W_0)")
                ax.plot(u["steps"][1:], u["change_from_previous"][1:], "--", color=c, alpha=0.6)
            else:
                u = a["filter_updates"][name]
                steps = [e * spe for e in a["epochs"]]
                ax.plot(steps, u["rotation_from_init"], "-o", ms=3, color=c, label=f"{name}: 1 - cos(W_t, W_0)")
                ax.plot(steps[1:], u["relative_change"][1:], "--", color=c, alpha=0.6)
        _step_axis(ax, a)
        ax.set(ylabel="change", title="Filter updates\n(dashed: change from the previous snapshot)")
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw)


def cka(a: dict[str, Any]) -> dict[str, bytes]:
    """Debiased linear CKA of each layer's activations at each snapshot against the final one, vs step,
    with each layer's 'formed at' step (CKA >= 0.9 from there on) marked."""
    spe = a.get("steps_per_epoch") or 1
    if len(a["layers"]) > MANY:
        conv = a["convergence"]
        by = [
            conv[n].get("by_step") or {"steps": [e * spe for e in a["epochs"]], "cka_to_final": conv[n]["cka_to_final"]}
            for n in a["layers"]
        ]
        title = "Convergence: debiased CKA to the final snapshot"
        return _heatmap(
            a, [(n, b["cka_to_final"]) for n, b in zip(a["layers"], by)], by[0]["steps"], title, "CKA", (0.0, 1.0)
        )

    def draw(ax: Any) -> None:
        values = []
        for i, name in enumerate(a["layers"]):
            conv = a["convergence"][name]
            color = DEPTH_COLORS[i % len(DEPTH_COLORS)]
            by = conv.get("by_step") or {"steps": [e * spe for e in a["epochs"]], "cka_to_final": conv["cka_to_final"]}
            values += by["cka_to_final"]
            formed = conv.get("formed_at_step")
            ax.plot(
                by["steps"],
                by["cka_to_final"],
                "-o",
                ms=2.5,
                color=color,
                label=f"{name}" + (f" (formed at step {formed})" if formed is not None else " (not formed)"),
            )
            if formed is not None:
                ax.axvline(formed, color=color, lw=0.8, ls="--", alpha=0.7)
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        _step_axis(ax, a)
        low = min(0.0, min(values, default=0.0) - 0.05)  # debiased CKA can dip below 0
        ax.set(
            ylabel="debiased CKA to final snapshot",
            ylim=(low, 1.02),
            title="Convergence of representations\n(BatchNorm statistics of the probe set)",
        )
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw)


def _by_depth(
    a: dict[str, Any],
    title: str,
    ylabel: str,
    series: list[tuple[str, list, str, list | None]],
    hline: tuple[float, str] | None = None,
) -> dict[str, bytes]:
    """One line per (label, values by depth, style, error bars or None), optionally a labelled level."""

    def draw(ax: Any) -> None:
        depths = list(range(1, len(a["layers"]) + 1))
        for label, ys, style, err in series:
            ax.errorbar(depths, ys, yerr=err, fmt=style, capsize=3, label=label)
        if hline:
            ax.axhline(hline[0], color="grey", lw=0.8, ls=":", label=hline[1])
        ax.set(xlabel="depth", ylabel=ylabel, xticks=depths, title=title)
        ax.legend(fontsize=8, frameon=False)

    return _figure(draw)


def complexity(a: dict[str, Any]) -> dict[str, bytes]:
    """Structure bits of the activation-maximization images vs depth (what DEFLATE saves by the pixels'
    arrangement, ``metrics.structure_bits``): init vs last rendered epoch."""
    comp = a["complexity"]
    epochs = sorted({int(e) for name in a["layers"] for e in comp.get(name, {})})
    layers = [n for n in a["layers"] if str(epochs[0]) in comp.get(n, {}) and str(epochs[-1]) in comp.get(n, {})]
    a = {**a, "layers": layers}  # a render of some layers only: plot those
    series = [
        (
            f"epoch {e}" + (" (random init)" if e == 0 else ""),
            [comp[n][str(e)]["structure"]["mean"] for n in layers],
            style,
            [comp[n][str(e)]["structure"]["std"] for n in layers],
        )
        for e, style in ((epochs[0], "s--"), (epochs[-1], "o-"))
    ]
    title = "Spatial structure of activation-maximization images" + (
        f"\n{a['settings_set']}" if a.get("settings_set") else ""
    )
    return _by_depth(a, title, "structure bits per pixel", series)


def receptive_field(a: dict[str, Any]) -> dict[str, bytes]:
    """Theoretical field, effective field (side of the square holding 90% of the gradient; 2 px steps)
    and twice the RMS radius of the gradient mass (continuous, +- its spread over images) vs depth."""
    rf = a["receptive_field"]
    a = {**a, "layers": [n for n in a["layers"] if n in rf]}  # a deep model: the layers the gallery shows
    first, last = a["epochs"][0], a["epochs"][-1]
    series = [("theoretical", [rf[n]["theoretical_px"] for n in a["layers"]], "o-", None)]
    series += [
        (f"effective (90% square), epoch {e}", [rf[n][f"effective_px_epoch_{e}"] for n in a["layers"]], "s--", None)
        for e in (first, last)
    ]
    if all(f"rms_radius_px_epoch_{last}" in rf[n] for n in a["layers"]):  # analyses before the RMS radius lack it
        series += [
            (
                f"2 x RMS radius, epoch {e}",
                [2 * rf[n][f"rms_radius_px_epoch_{e}"] for n in a["layers"]],
                style,
                [2 * rf[n][f"rms_radius_sd_px_epoch_{e}"] for n in a["layers"]],
            )
            for e, style in ((first, "^:"), (last, "v:"))
        ]
    side = rf[a["layers"][0]].get("measured_at_px", rf[a["layers"][0]]["image_px"])
    return _by_depth(
        a,
        f"Receptive field (effective: measured at {side} px)",
        "px",
        series,
        hline=(rf[a["layers"][0]]["image_px"], "image size"),
    )


def probes(a: dict[str, Any]) -> dict[str, bytes]:
    """Linear-probe accuracy (global average pooling) per depth: left, over the epochs (solid: this run;
    dashed: the shuffled-label control, when given); right, against depth at the random init, the last epoch
    and the control's last epoch, with chance."""
    p = a["probes"]
    layers = [n for n in a["layers"] if n in p["layers"]]
    ctl = p.get("control")

    def acc(section: dict[str, Any], n: str) -> list[float]:
        return section["layers"][n]["global"]["accuracy"]

    def draw(axes: Any) -> None:
        left, right = axes
        if len(layers) > MANY:  # one row per layer: 20 lines and a 20-entry legend cannot be read
            epochs = list(range(len(p["epochs"])))
            im = _layer_rows(
                left, a, layers, [acc(p, n) for n in layers], (0, 1), epochs, [str(e) for e in p["epochs"]]
            )
            left.set(xlabel="epoch (0 = random init)")
            left.set_title("Linear probe accuracy per layer", fontsize=10)
            left.figure.colorbar(im, ax=left, fraction=0.05, pad=0.02)
        else:
            for d, n in enumerate(layers):
                color = DEPTH_COLORS[d % len(DEPTH_COLORS)]
                left.plot(p["epochs"], acc(p, n), "o-", color=color, ms=3, label=f"depth {d + 1}")
                if ctl:
                    left.plot(ctl["epochs"], acc(ctl, n), "--", color=color, lw=1)
            left.set(xlabel="epoch (0 = random init)", ylabel="probe accuracy (held-out)", ylim=(0, 1.02))
            title = "Linear probe per depth" + ("\n(dashed: shuffled-label control)" if ctl else "")
            left.set_title(title, fontsize=10)
            left.legend(fontsize=7, frameon=False)
        depths = list(range(1, len(layers) + 1))
        right.plot(depths, [acc(p, n)[0] for n in layers], "s--", label="random init")
        right.plot(depths, [acc(p, n)[-1] for n in layers], "o-", label=f"epoch {p['epochs'][-1]}")
        if ctl:
            right.plot(depths, [acc(ctl, n)[-1] for n in layers], "^:", label="shuffled-label control")
        right.axhline(p["chance_accuracy"], color="grey", lw=0.8, ls=":", label="chance")
        right.set(xlabel="depth", xticks=depths, ylim=(0, 1.02))
        right.set_title("Probe accuracy by depth", fontsize=10)
        right.legend(fontsize=7, frameon=False)

    return _figure(draw, width=9.0, height=3.4 if len(layers) <= MANY else 1.4 + 0.16 * len(layers), ncols=2)


PLOTS = {
    "weight_change": weight_change,
    "cka": cka,
    "complexity": complexity,
    "receptive_field": receptive_field,
    "probes": probes,
}
NEEDS = {
    "probes": "probes",
    "weight_change": "filter_updates",
    "cka": "convergence",
    "complexity": "complexity",
    "receptive_field": "receptive_field",
}


def available(a: dict[str, Any]) -> list[str]:
    """Plots whose section of the analysis holds numbers (not a 'skipped' note)."""
    return [k for k, need in NEEDS.items() if isinstance(a.get(need), dict) and a[need] and "skipped" not in a[need]]


def cka_heatmap(cka: list[list[float]], rows: list[str], cols: list[str], title: str) -> dict[str, bytes]:
    """Debiased CKA of every layer of one run (rows) against every layer of another (columns)."""

    def draw(ax: Any) -> None:
        im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(cols)), [c.split(".")[-1] for c in cols], rotation=45, fontsize=7)
        ax.set_yticks(range(len(rows)), [r.split(".")[-1] for r in rows], fontsize=7)
        for i, row in enumerate(cka):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_title(title, fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        ax.grid(False)

    return _figure(draw, width=4.6, height=4.0)


def same_depth(data: dict[str, Any]) -> dict[str, bytes]:
    """Same-depth CKA per pair of runs with the same number of layers (solid) and against the other run's
    random init (dashed), by depth."""
    names = data["runs"]

    def draw(ax: Any) -> None:
        for k, pair in enumerate(p for p in data["pairs"] if "same_depth" in p):
            color = DEPTH_COLORS[k % len(DEPTH_COLORS)]
            depths = list(range(1, len(pair["same_depth"]) + 1))
            label = f"{names[pair['a']]} vs {names[pair['b']]}"
            ax.plot(depths, pair["same_depth"], "o-", color=color, label=label)
            ax.plot(depths, pair["init_control"], "s--", color=color, lw=1)
            ax.set_xticks(depths)
        ax.set(xlabel="depth", ylabel="debiased CKA, same depth", ylim=(-0.05, 1.05))
        ax.set_title("Same depth across runs (dashed: against the other's random init)", fontsize=9)
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw)


def overlay(panels: dict[str, dict[str, tuple[list[float], list[float]]]], ylabel: str, title: str) -> dict[str, bytes]:
    """Runs on shared axes: one panel per key of ``panels`` (a depth, or one quantity), one line per run
    (``panels[panel][run label] = (optimizer steps, values)``), runs coloured alike in every panel; the x axis
    in optimizer steps on a log scale (linear below 1, so step 0 shows)."""
    names = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    cols = max(1, len(panels))

    def draw(axes: Any) -> None:
        axes = list(axes) if cols > 1 else [axes]
        for ax, (panel, lines) in zip(axes, panels.items()):
            for label, (steps, values) in lines.items():
                color = DEPTH_COLORS[names.index(label) % len(DEPTH_COLORS)]
                ax.plot(steps, values, "o-", ms=2, lw=1, color=color, label=label)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
            ax.set_title(panel, fontsize=9)
            ax.set_xlabel("optimizer step", fontsize=8)
        axes[0].set_ylabel(ylabel, fontsize=8)
        axes[0].legend(fontsize=6, frameon=False)
        axes[0].figure.suptitle(title, fontsize=10)

    return _figure(draw, width=min(16.0, 3.2 * cols + 1), height=3.2, ncols=cols)

"""The analysis plots as a new user sees them: titles that fit beside each other, and axes that never
show values a quantity cannot take."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from featviz import plots  # noqa: E402

LAYERS = ["c1", "c2"]
ANALYSIS = {
    "layers": LAYERS,
    "epochs": [0, 1, 2],
    "steps_per_epoch": 10,
    "updates_by_step": {
        n: {
            "steps": [0, 1, 2, 4, 10, 20],
            "rotation_from_init": [0, 0.01, 0.02, 0.05, 0.1, 0.2],
            "change_from_previous": [None, 0.01, 0.01, 0.03, 0.05, 0.1],
        }
        for n in LAYERS
    },
    "convergence": {
        n: {
            "cka_to_final": [0.3, 0.9, 1.0],
            "formed_at_step": 10,
            "by_step": {"steps": [0, 1, 2, 4, 10, 20], "cka_to_final": [0.3, 0.4, 0.5, 0.7, 0.95, 1.0]},
        }
        for n in LAYERS
    },
}


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The axes each plot function drew on (the figure is built as ``plots._figure`` builds it)."""
    axes: list[Any] = []

    def figure(draw, width: float = 5.2, height: float = 3.4, **_kw: Any) -> dict[str, bytes]:
        fig, ax = plt.subplots(1, 1, figsize=(width, height), dpi=100)
        draw(ax)
        fig.tight_layout()
        fig.canvas.draw()
        axes.append(ax)
        return {}

    monkeypatch.setattr(plots, "_figure", figure)
    return axes


@pytest.mark.parametrize("plot", [plots.weight_change, plots.cka])
def test_step_plots_have_no_negative_steps_and_titles_that_fit(drawn, plot) -> None:
    plot(ANALYSIS)
    ax = drawn[0]
    assert ax.get_xlim()[0] >= 0  # optimizer steps are never negative: no "-10^1" ticks
    assert all(t >= 0 for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
    title = ax.title
    box = title.get_window_extent()
    fig_box = ax.figure.bbox
    assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1  # the title is not cut off at either side
    assert all(len(line) <= 45 for line in title.get_text().splitlines())


MANY = [f"layer{d // 4 + 1}.{d % 4}.conv" for d in range(20)]  # a ResNet-18's 20 convs
DEEP = {
    **ANALYSIS,
    "layers": MANY,
    "depth": {n: {"path_depth": i + 1, "branch": i == 7, "stage": n.split(".")[0]} for i, n in enumerate(MANY)},
    "updates_by_step": {n: ANALYSIS["updates_by_step"]["c1"] for n in MANY},
    "convergence": {n: ANALYSIS["convergence"]["c1"] for n in MANY},
}


@pytest.mark.parametrize("plot", [plots.weight_change, plots.cka])
def test_twenty_layers_are_a_heatmap_with_every_label_inside_the_figure(drawn, plot) -> None:
    plot(DEEP)
    ax = drawn[0]
    assert len(ax.images) == 1 and ax.get_legend() is None and not ax.lines  # rows, not 20 lines and a legend
    assert ax.images[0].get_array().shape == (20, 6)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "d1 layer1.0.conv" and labels[7] == "b8 layer2.3.conv"  # the traced depth; b: a branch
    fig_box = ax.figure.bbox
    for text in [*ax.get_yticklabels(), ax.title]:
        box = text.get_window_extent()
        assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1, text.get_text()


def test_a_few_layers_keep_lines_and_a_legend_inside_the_axes(drawn) -> None:
    plots.weight_change(ANALYSIS)
    ax = drawn[0]
    assert not ax.images and ax.get_legend() is not None
    legend, fig_box = ax.get_legend().get_window_extent(), ax.figure.bbox
    assert legend.x0 >= fig_box.x0 and legend.x1 <= fig_box.x1 and legend.y1 <= fig_box.y1

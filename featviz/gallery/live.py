"""The live gallery: filter frames and training curves that appear while a run trains.

In: a run folder that another process (or thread) is training (``featviz.livetrain`` starts this
beside ``featviz train --live``). Out: for every newly *committed*
snapshot (listed by the manifest), its filter frames in both views under ``renders/filters/`` and a
record in ``renders.jsonl``; ``gallery/live.json`` (frames, labels and metrics so far), which the page
built with ``live=True`` polls and applies without a reload; ``gallery/curves.png``. Live frames use the
init's colour scale per layer (the later scale is not known yet); ``featviz render`` redraws them with
one scale across the whole run. Nothing uncommitted is read; every file is written atomically.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from featviz.errors import RunError
from featviz.filters import filter_grid, layer_scale
from featviz.gallery.build import build_gallery
from featviz.gallery.serve import serve
from featviz.images import png_bytes
from featviz.plots import training_curves
from featviz.run.fileio import json_text
from featviz.run.lock import held
from featviz.run.schema import RenderRecord, SnapshotPoint
from featviz.run.store import Run

LIVE = {"live": True}  # the settings of live frames: featviz render replaces them


class LiveGallery:
    """Call ``refresh()`` whenever snapshots may have been committed; it draws only what is new."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.drawn: set[str] = set()
        self.init: dict[str, Any] = {}
        self.scale: dict[str, float] = {}
        self.version = 0
        self.epochs_seen = -1

    def start(self) -> None:
        """Draw what is committed, then build the live page: it opens with those frames already in it
        (built first, it waited for its first poll of live.json to show them)."""
        self.refresh()
        build_gallery(self.run, live=True)

    def refresh(self) -> bool:
        """Draw the committed snapshots not drawn yet and rewrite live.json; True if anything changed."""
        try:
            points = self.run.snapshot_points()
        except RunError:  # e.g. the manifest is being replaced this instant: try again next time
            return False
        new = [p for p in points if p.id not in self.drawn]
        done = self.run.epochs_done
        if not new and done == self.epochs_seen:
            return False
        for p in new:
            self._draw(p)
        if done != self.epochs_seen:
            metrics = self.run.metrics(strict=False)
            if metrics:
                self.run.write_artifact("gallery", "curves.png", training_curves(metrics))
            self.epochs_seen = done
        self.version += 1
        self._write_state(points)
        return True

    def _draw(self, point: SnapshotPoint) -> None:
        state = self.run.load_point(point)
        recs = []
        for layer in self.run.info.layers:
            name = layer.name
            w = state[f"{name}.weight"]
            if name not in self.init:  # the first committed snapshot is the init
                self.init[name] = w.clone()
                self.scale[name] = layer_scale([w])
            for kind, sub, v in (("filters", "", w), ("filters_learned", "learned/", w - self.init[name])):
                path = self.run.write_artifact(
                    "renders",
                    f"filters/{name}/{sub}{point.id}.png",
                    png_bytes(filter_grid(v, self.scale[name], rgb=layer.depth == 1)),
                )
                recs.append(
                    RenderRecord(
                        self.run.rel(path),
                        kind,
                        layer=name,
                        depth=layer.depth,
                        epoch=point.epoch,
                        step=point.step,
                        point=point.id,
                        label=point.label,
                        scale=self.scale[name],
                        settings=LIVE,
                    )
                )
        self.run.add_renders(recs)
        self.drawn.add(point.id)

    def _write_state(self, points: list[SnapshotPoint]) -> None:
        shown = [p for p in points if p.id in self.drawn]
        layers = {
            layer.name: {
                "srcs": [f"../renders/filters/{layer.name}/{p.id}.png" for p in shown],
                "learned": [f"../renders/filters/{layer.name}/learned/{p.id}.png" for p in shown],
            }
            for layer in self.run.info.layers
        }
        metrics = self.run.metrics(strict=False)
        state = {
            "version": self.version,
            "labels": [p.label for p in shown],
            "layers": layers,
            "epochs_done": self.run.epochs_done,
            "epochs_planned": self.run.epochs_planned,
            "complete": self.run.complete,
            "last": metrics[-1] if metrics else None,
        }
        self.run.write_artifact("gallery", "live.json", json_text(state).encode())


def training(run: Run) -> bool:
    """Whether ``run`` is being written by a training process now (it holds the run's ``train`` lock,
    ``featviz.run.lock``): only then does a live gallery draw frames into it."""
    return not run.complete and held(run.path, "train")


def watch(live: LiveGallery, stop: threading.Event, every_s: float = 1.0) -> None:
    """Refresh a started live gallery every ``every_s`` seconds until ``stop`` is set, then once more."""
    while not stop.wait(every_s):
        live.refresh()
    live.refresh()


def serve_live(
    run: Run,
    port: int = 8000,
    open_browser: bool = False,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    every_s: float = 1.0,
) -> None:
    """Serve the run on 127.0.0.1 and keep its gallery live until Ctrl-C or ``stop``, while a training
    process writes it (``training``); any other run is served as it is, and nothing is written to it."""
    if not training(run):
        serve(run, port, open_browser, on_ready, stop)
        return
    stop = stop or threading.Event()
    live = LiveGallery(run)
    live.start()  # the live page and live.json exist before the URL is announced
    watcher = threading.Thread(target=watch, args=(live, stop, every_s), daemon=True)
    watcher.start()
    try:
        serve(run, port, open_browser, on_ready, stop)
    finally:
        stop.set()
        watcher.join(timeout=10)

"""The live gallery: filter frames and training curves that appear while a run trains.

In: a run folder that another process (or thread) is training. Out: for every newly *committed*
snapshot (listed by the manifest), its filter frames in both views under ``renders/filters/`` and a
record in ``renders.jsonl``; ``gallery/live.json`` (frames, labels and metrics so far), which the page
built with ``live=True`` polls and applies without a reload; ``gallery/curves.png``. Live frames use the
init's colour scale per layer (the later scale is not known yet); ``featviz render`` redraws them with
one scale across the whole run. Nothing uncommitted is read; every file is written atomically.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from featviz.errors import RunError
from featviz.run.fileio import json_text
from featviz.filters import filter_grid, layer_scale
from featviz.gallery.build import build_gallery
from featviz.gallery.serve import make_server, serve
from featviz.images import png_bytes
from featviz.plots import training_curves
from featviz.run.lock import held
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
        build_gallery(self.run, live=True)
        self.refresh()

    def refresh(self) -> bool:
        """Draw the committed snapshots not drawn yet and rewrite live.json; True if anything changed."""
        try:
            points = self.run.snapshot_points()
        except RunError:  # e.g. the manifest is being replaced this instant: try again next time
            return False
        new = [p for p in points if p["id"] not in self.drawn]
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

    def _draw(self, point: dict[str, Any]) -> None:
        state = self.run.load_point(point)
        recs = []
        for layer in self.run.meta["layers"]:
            name = layer["name"]
            w = state[f"{name}.weight"]
            if name not in self.init:  # the first committed snapshot is the init
                self.init[name] = w.clone()
                self.scale[name] = layer_scale([w])
            for kind, sub, v in (("filters", "", w), ("filters_learned", "learned/", w - self.init[name])):
                path = self.run.write_artifact("renders", f"filters/{name}/{sub}{point['id']}.png",
                                               png_bytes(filter_grid(v, self.scale[name], rgb=layer["depth"] == 1)))
                recs.append({"kind": kind, "layer": name, "depth": layer["depth"], "epoch": point["epoch"],
                             "step": point["step"], "point": point["id"], "label": point["label"],
                             "file": self.run.rel(path), "scale": self.scale[name], "settings": LIVE})
        self.run.add_renders(recs)
        self.drawn.add(point["id"])

    def _write_state(self, points: list[dict[str, Any]]) -> None:
        shown = [p for p in points if p["id"] in self.drawn]
        layers = {layer["name"]: {"srcs": [f"../renders/filters/{layer['name']}/{p['id']}.png" for p in shown],
                                  "learned": [f"../renders/filters/{layer['name']}/learned/{p['id']}.png" for p in shown]}
                  for layer in self.run.meta["layers"]}
        metrics = self.run.metrics(strict=False)
        state = {"version": self.version, "labels": [p["label"] for p in shown], "layers": layers,
                 "epochs_done": self.run.epochs_done, "epochs_planned": self.run.epochs_planned,
                 "complete": self.run.complete, "last": metrics[-1] if metrics else None}
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


def serve_live(run: Run, port: int = 8000, open_browser: bool = False,
               on_ready: Callable[[str], None] | None = None, stop: threading.Event | None = None,
               every_s: float = 1.0) -> None:
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


def _lower_priority(idle: bool) -> None:
    """``idle``: run only on CPU time nothing else wants (Linux's idle class; else nice 19). Otherwise
    nice 10: a small share of a busy CPU, so live frames still appear while training runs."""
    import os

    try:
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.nice(10)
    except (AttributeError, OSError):
        try:
            os.nice(19 if idle else 10)
        except (AttributeError, OSError):
            pass


def live_worker(path: str, role: str, model: str = "", every_s: float = 1.0) -> None:
    """A background process of ``featviz train --live``, on one thread. ``role="frames"`` (nice 10):
    keeps the live gallery current (``LiveGallery.refresh``) until the run is complete.
    ``role="render"`` (``--live-render``, idle class): renders activation maximization (default
    settings, no filters) at each ``auto`` moment of the planned run once its snapshot is committed,
    resting ``PAUSE`` seconds per second of rendering while training runs, then rebuilds the live page
    with the images. Prints "ready" once started, so training can wait for the start-up to pass."""
    import os

    import torch

    from featviz.config import RenderConfig
    from featviz.layers import select_layers
    from featviz.loading import allow
    from featviz.render import render_actmax
    from featviz.schedule import moments

    _lower_priority(idle=role == "render")
    torch.set_num_threads(1)
    run = Run.open(Path(path))
    allow(run, model or None)  # the factory the training process was given on its command line
    layers = select_layers(run.meta["layers"], ())  # the default selection, as featviz render makes
    live = LiveGallery(run)
    cfg = RenderConfig(filters=False)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        if os.getppid() != parent:  # the training process is gone: nobody will complete the run
            return
        complete = run.complete
        if role == "frames":
            live.refresh()
            if complete:
                build_gallery(run, live=True)  # the page, opened from disk later, lists the final frames
                return
            time.sleep(every_s)
            continue
        rendered = 0
        for moment in moments("auto", run.snapshot_points(), planned=run.epochs_planned):
            for layer in layers:  # one layer at a time, so the rests stay short
                if os.getppid() != parent:
                    return
                t0 = time.perf_counter()
                rendered += (n := render_actmax(run, [layer], [moment], cfg, torch.device("cpu")))
                if n and not run.complete:
                    time.sleep(PAUSE * (time.perf_counter() - t0))
        if complete and rendered == 0:
            build_gallery(run, live=True)  # the page now lists the activation-maximization images
            return
        if rendered == 0:
            time.sleep(every_s)


PAUSE = 4.0  # seconds of rest per second of background rendering while training runs


def _check_port(port: int) -> None:
    """A RunError now if 127.0.0.1:``port`` cannot be served (e.g. in use)."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise RunError(f"cannot serve on 127.0.0.1:{port}: {e.strerror or e}") from None


class LiveTraining:
    """A TrainProgress that passes everything to ``inner`` and, from the moment training starts until
    ``stop()``, serves the run on 127.0.0.1 (a server thread: cheap) while background processes draw
    the live frames and, with ``render``, the activation maximization (``live_worker``); ``stop()``
    waits for them once training is complete."""

    def __init__(self, inner: Any, port: int = 8000, on_ready: Callable[[str], None] | None = None,
                 render: bool = False) -> None:
        self.inner, self.port, self.on_ready, self.render = inner, port, on_ready, render
        _check_port(port)  # before any run is created
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._workers: list[subprocess.Popen] = []
        self._run: Run | None = None

    def start(self, run: Run, first_epoch: int, epochs: int, batches: int) -> None:
        self.inner.start(run, first_epoch, epochs, batches)
        if self._thread is None:
            self._run = run
            self._server = make_server(run, self.port)  # a port in use fails here, in one line
            LiveGallery(run).start()  # the live page exists before the URL is announced
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
            if self.on_ready:
                self.on_ready(f"http://127.0.0.1:{self._server.server_address[1]}/gallery/index.html")
            for role in ("frames", "render") if self.render else ("frames",):
                worker = subprocess.Popen(
                    [sys.executable, "-c", "import sys; from featviz.gallery.live import live_worker; "
                     "live_worker(*sys.argv[1:])", str(run.path), role,
                     # this process made the run from the user's own --model: the worker may build it
                     run.meta["configs"]["model"].get("factory", "")], stdout=subprocess.PIPE, text=True,
                    start_new_session=True)  # Ctrl-C reaches the CLI, which ends the workers in stop()
                worker.stdout.readline()  # its start-up (imports) runs before training, not during it
                self._workers.append(worker)

    def step(self, info: Any) -> None:
        self.inner.step(info)

    def epoch(self, record: dict) -> None:
        self.inner.epoch(record)

    def stop(self) -> None:
        """Let the background process finish (training complete) or end it (training failed), then stop serving."""
        for worker in self._workers:
            if self._run is not None and self._run.complete:
                worker.wait()
            else:
                worker.terminate()
                worker.wait(timeout=30)
            worker.stdout.close()
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=30)

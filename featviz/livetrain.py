"""``featviz train --live``: serve the run while it trains, with background processes that draw it.

``LiveTraining`` (a ``TrainProgress``) starts, once training starts, a server thread and one or two
background processes (``live_worker``): "frames" keeps the live gallery current
(``featviz.gallery.live``); "render" (``--live-render``) has the pipeline render activation
maximization at each moment the run reaches (``pipeline.render_reached``), on CPU time training does
not want. Both end when the run is complete, or when the training process is gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from featviz.config import RenderConfig
from featviz.errors import RunError
from featviz.gallery.build import build_gallery
from featviz.gallery.live import LiveGallery
from featviz.gallery.serve import make_server
from featviz.loading import allow
from featviz.pipeline import render_reached
from featviz.run.store import Run

PAUSE = 4.0  # seconds of rest per second of background rendering while training runs


def _lower_priority(idle: bool) -> None:
    """``idle``: run only on CPU time nothing else wants (Linux's idle class; else nice 19). Otherwise
    nice 10: a small share of a busy CPU, so live frames still appear while training runs."""
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
    ``role="render"`` (``--live-render``, idle class): ``pipeline.render_reached`` with the default
    settings and no filters, resting ``PAUSE`` seconds per second of rendering while training runs, then
    rebuilds the live page with the images. Prints "ready" once started, so training can wait for the
    start-up to pass."""
    _lower_priority(idle=role == "render")
    torch.set_num_threads(1)
    run = Run.open(Path(path))
    allow(run, model or None)  # the factory the training process was given on its command line
    live = LiveGallery(run)
    parent = os.getppid()

    def rest(seconds: float) -> bool:  # False once nobody will complete the run
        if seconds and not run.complete:
            time.sleep(PAUSE * seconds)
        return os.getppid() == parent

    print("ready", flush=True)
    while os.getppid() == parent:  # the training process is gone: nobody will complete the run
        complete = run.complete
        if role == "frames":
            live.refresh()
            if complete:
                build_gallery(run, live=True)  # the page, opened from disk later, lists the final frames
                return
            time.sleep(every_s)
            continue
        rendered = render_reached(run, RenderConfig(filters=False), torch.device("cpu"), rest)
        if complete and rendered == 0:
            build_gallery(run, live=True)  # the page now lists the activation-maximization images
            return
        if rendered == 0:
            time.sleep(every_s)


def _check_port(port: int) -> None:
    """A RunError now if 127.0.0.1:``port`` cannot be served (e.g. in use)."""
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

    def __init__(
        self, inner: Any, port: int = 8000, on_ready: Callable[[str], None] | None = None, render: bool = False
    ) -> None:
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
                    [
                        sys.executable,
                        "-c",
                        "import sys; from featviz.livetrain import live_worker; live_worker(*sys.argv[1:])",
                        str(run.path),
                        role,
                        # this process made the run from the user's own --model: the worker may build it
                        run.info.model_config.get("factory", ""),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )  # Ctrl-C reaches the CLI, which ends the workers in stop()
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

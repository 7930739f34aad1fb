"""What a caller (the CLI's progress bars, a notebook) hears while a stage runs.

Two kinds, two names: ``StageProgress`` is called as ``(what, done, total)`` by render and analyze;
``TrainProgress`` is an object told when training starts, after each step and after each epoch.
The defaults say nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from featviz.run.store import Run
    from featviz.training import StepInfo

StageProgress = Callable[[str, int, int], None]  # (what, done, total)


def silent(what: str, done: int, total: int) -> None:
    """A StageProgress that says nothing."""


class TrainProgress(Protocol):
    def start(self, run: "Run", first_epoch: int, epochs: int, batches: int) -> None: ...
    def step(self, info: "StepInfo") -> None: ...
    def epoch(self, record: dict) -> None: ...


class SilentTraining:
    """A TrainProgress that says nothing."""

    def start(self, run: "Run", first_epoch: int, epochs: int, batches: int) -> None: ...
    def step(self, info: "StepInfo") -> None: ...
    def epoch(self, record: dict) -> None: ...

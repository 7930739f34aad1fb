"""Run descriptions for tests that make a run folder by hand (``Run.create`` takes a ``RunInfo``)."""

from __future__ import annotations

from typing import Any

from featviz.run.schema import SCHEMA_VERSION, RunInfo

DATA = {"name": "shapes", "size": 16, "image_channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def run_info(name: str = "r", epochs: int = 2, **fields: Any) -> RunInfo:
    """A valid run.json, as the type: ``fields`` replace or add its top-level JSON keys."""
    return RunInfo.from_json(
        {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "data": DATA,
            "configs": {"data": {"name": "shapes"}, "model": {}, "train": {"epochs": epochs}},
            **fields,
        }
    )

"""The Hypothesis strategies of test_hostile_runs.py: drawn values and the damages each property draws from."""

from __future__ import annotations

import hashlib
import json

from hypothesis import strategies as st

from hostile_damages import (
    ESCAPES,
    HUGE,
    LINK_DESTS,
    NONFINITE,
    PATHS,
    WRONG_TYPES,
    AddEntry,
    Empty,
    Fifo,
    Flip,
    FolderInPlace,
    SetJson,
    SetLine,
    Symlink,
    Truncate,
    Value,
    _nested,
    _text_value,
)

# ----------------------------------------------------------------------------- hostile JSON values
wrong_types = st.sampled_from(WRONG_TYPES)
huge_numbers = st.sampled_from(HUGE + NONFINITE)
deep_values = st.builds(
    _nested, st.sampled_from("[{"), st.one_of(st.integers(1, 50_000), st.sampled_from([999, 1000, 5000, 50_000]))
)
escape_values = st.sampled_from(ESCAPES).map(_text_value)
path_values = st.sampled_from(PATHS).map(_text_value)
any_value = st.one_of(wrong_types, huge_numbers, deep_values, escape_values, path_values)


# ----------------------------------------------------------------------------- damage strategies
# run.json last: Hypothesis draws early elements more often, and a broken run.json hides every other damage
FILES = [
    "metrics.jsonl",
    "manifest.json",
    "renders.jsonl",
    "snapshots/epoch_000.safetensors",
    "snapshots/step_0000001.safetensors",
    "snapshots/epoch_002.safetensors",
    "run.json",
]
FOLDERS = ["gallery", "snapshots", "renders", "renders/filters", "state"]
GALLERY_FILES = ["gallery/index.html", "gallery/curves.png"]
SPECIAL_TARGETS = FILES[:-1] + FOLDERS + GALLERY_FILES + ["renders/filters/features.conv2/epoch_002.png", "run.json"]
RUN_SLOTS = [
    (),
    ("schema_version",),
    ("configs",),
    ("configs", "train"),
    ("configs", "train", "epochs"),
    ("configs", "data"),
    ("configs", "data", "size"),
    ("configs", "data", "name"),
    ("configs", "model"),
    ("configs", "model", "widths"),
    ("configs", "model", "pools"),
    ("layers",),
    ("layers", 0),
    ("layers", 0, "name"),
    ("layers", 0, "kernel"),
    ("layers", 0, "out_ch"),
    ("layers", 1, "depth"),
    ("recording",),
    ("name",),
]
MANIFEST_SLOTS = [
    (),
    ("epochs_done",),
    ("files",),
    ("files", "snapshots/epoch_000.safetensors"),
    ("files", "metrics.jsonl"),
    ("files", "run.json"),
]
METRIC_FIELDS = [None, "epoch", "step", "label", "val_acc", "train_loss"]
RENDER_FIELDS = [
    None,
    "file",
    "kind",
    "layer",
    "step",
    "epoch",
    "label",
    "channel",
    "point",
    "settings",
    "settings_id",
    "activation",
]
# fields that hold text, where a drawn escape sequence may reach a message or a listing
RUN_TEXT_SLOTS = [("configs", "data", "name"), ("name",), ("layers", 0, "name"), ("configs", "data", "data_dir")]
METRIC_TEXT_FIELDS = ["label", "epoch"]
RENDER_TEXT_FIELDS = ["file", "layer", "kind", "label", "point", "settings_id"]
ENTRY_KEYS = PATHS + ESCAPES + ["snapshots/step_0000003.safetensors", "metrics.jsonl"]
DIGEST = Value("a sha256 of nothing", json.dumps(hashlib.sha256(b"").hexdigest()))


def _json_edits(
    values: st.SearchStrategy,
    run_slots: list = RUN_SLOTS,
    manifest_slots: list = MANIFEST_SLOTS,
    metric_fields: list = METRIC_FIELDS,
    render_fields: list = RENDER_FIELDS,
) -> st.SearchStrategy:
    """A drawn value into a drawn slot of run.json or manifest.json, or a field of a metrics or renders line
    (a line index past the end appends a line); an empty slot list leaves that file alone."""
    edits = [
        st.builds(SetLine, st.just("metrics.jsonl"), st.integers(0, 3), st.sampled_from(metric_fields), values),
        st.builds(SetJson, st.just("manifest.json"), st.sampled_from(manifest_slots), values)
        if manifest_slots
        else None,
        st.builds(SetLine, st.just("renders.jsonl"), st.integers(0, 3), st.sampled_from(render_fields), values),
        st.builds(SetJson, st.just("run.json"), st.sampled_from(run_slots), values),
    ]
    return st.one_of(*[e for e in edits if e is not None])


flips = st.builds(
    Flip,
    st.sampled_from(FILES),
    st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8).map(tuple),
)
truncations = st.builds(Truncate, st.sampled_from(FILES), st.floats(0, 1))
emptied = st.builds(Empty, st.sampled_from(FILES))
entries = st.builds(AddEntry, st.sampled_from(ENTRY_KEYS), st.one_of(st.just(DIGEST), any_value))
outside_files = st.builds(
    SetLine, st.just("renders.jsonl"), st.integers(0, 3), st.just("file"), st.one_of(path_values, wrong_types)
)
links = st.builds(Symlink, st.sampled_from(SPECIAL_TARGETS), st.sampled_from(LINK_DESTS))
# the gallery is the one reader that writes: its folder and files first
links_out = st.builds(
    Symlink, st.sampled_from(FOLDERS + GALLERY_FILES + FILES), st.sampled_from(["sentinel folder", "sentinel file"])
)
links_dev = st.builds(Symlink, st.sampled_from(SPECIAL_TARGETS), st.sampled_from(["/dev/zero", "/dev/null"]))
fifos = st.builds(Fifo, st.sampled_from(SPECIAL_TARGETS))
folders = st.builds(FolderInPlace, st.sampled_from(FILES))

# Each property draws from many kinds of damage, with the kinds most likely to break it listed more
# than once (st.one_of picks a branch uniformly), so its few examples are spent where they matter.
# Escape sequences go into text fields (the manifest's text is its keys: AddEntry).
escape_text = _json_edits(escape_values, RUN_TEXT_SLOTS, [], METRIC_TEXT_FIELDS, RENDER_TEXT_FIELDS)
FAMILIES = {
    "errors": [_json_edits(any_value), entries, outside_files, flips, truncations, emptied, links, fifos, folders],
    "time": [
        fifos,
        links_dev,
        _json_edits(st.one_of(huge_numbers, deep_values)),
        fifos,
        links_dev,
        _json_edits(st.one_of(huge_numbers, deep_values)),
        flips,
        truncations,
        entries,
        links,
    ],
    "writes": [
        links_out,
        links_out,
        outside_files,
        links_out,
        entries,
        _json_edits(path_values),
        flips,
        emptied,
        fifos,
    ],
    "escapes": [
        escape_text,
        st.builds(AddEntry, st.sampled_from(ESCAPES), st.one_of(st.just(DIGEST), any_value)),
        escape_text,
        _json_edits(escape_values),
        escape_text,
        flips,
        _json_edits(any_value),
        links,
    ],
}


def damages(focus: str) -> st.SearchStrategy:
    return st.lists(st.one_of(*FAMILIES[focus]), min_size=1, max_size=3)

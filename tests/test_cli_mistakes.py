"""The command line, in-process: a table of user mistakes, each one line and a non-zero exit, and the
errors featviz does not expect (when the system fails a command: test_cli_failures.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from cli_helpers import _files, _train_argv, assert_one_line_error, tiny_shapes  # noqa: F401 - tiny_shapes: the autouse fixture
from conftest import make_png_folder

# ----------------------------------------------------------------------------- user mistakes
Setup = Callable[[Path, Callable], tuple[list[str], Callable[[], None] | None]]


def _train_with(*extra: str) -> Setup:
    return lambda tmp, cli: ([*_train_argv(tmp / "out"), *extra], None)


def _folder_with(make: Callable[[Path], Path]) -> Setup:
    return lambda tmp, cli: ([*_train_argv(tmp / "out"), "--data", f"folder:{make(tmp)}"], None)


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _a_file(tmp: Path) -> Path:
    (tmp / "file.txt").write_text("hello")
    return tmp / "file.txt"


def _corrupt_folder(tmp: Path) -> Path:
    root = make_png_folder(tmp / "imgs", classes=2, per_class=4, size=12)
    (root / "class_1" / "img_02.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _one_class_folder(tmp: Path) -> Path:
    return make_png_folder(tmp / "imgs", classes=1, per_class=4, size=12)


def _existing_run(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    out = tmp / "out"
    code, _, err = cli(_train_argv(out))
    assert code == 0, err
    before = _files(out / "r")
    assert "manifest.json" in before

    def untouched() -> None:
        assert _files(out / "r") == before

    return _train_argv(out, epochs=2), untouched


def _complete_run(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    assert cli(_train_argv(tmp / "out"))[0] == 0
    before = _files(tmp / "out" / "r")
    return ["train", "--resume", str(tmp / "out" / "r")], lambda: _same_run_files(tmp / "out" / "r", before)


def _no_manifest(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    """A run whose manifest.json is gone: resuming it once deleted every snapshot before refusing."""
    assert cli(_train_argv(tmp / "out", epochs=2))[0] == 0
    (tmp / "out" / "r" / "manifest.json").unlink()
    before = _files(tmp / "out" / "r")
    return ["train", "--resume", str(tmp / "out" / "r")], lambda: _same_run_files(tmp / "out" / "r", before)


def _complete_with_stray_snapshot(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    assert cli(_train_argv(tmp / "out"))[0] == 0
    (tmp / "out" / "r" / "snapshots" / "epoch_002.safetensors").write_bytes(b"left by a crash")
    before = _files(tmp / "out" / "r")
    return ["train", "--resume", str(tmp / "out" / "r")], lambda: _same_run_files(tmp / "out" / "r", before)


def _resume_plain_folder(tmp: Path, cli) -> tuple[list[str], None]:
    (tmp / "plain").mkdir()
    return ["train", "--resume", str(tmp / "plain")], None


def _out_is_file(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    argv = _train_argv(_a_file(tmp))

    def file_untouched() -> None:
        assert (tmp / "file.txt").read_text() == "hello"

    return argv, file_untouched


def _force_over_a_file(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    (tmp / "out").mkdir()
    (tmp / "out" / "r").write_text("not a run")

    def file_kept() -> None:  # --force replaces runs only: the user's file is still there, unchanged
        assert (tmp / "out" / "r").is_file() and (tmp / "out" / "r").read_text() == "not a run"
        assert [p.name for p in (tmp / "out").iterdir()] == ["r"]

    return [*_train_argv(tmp / "out"), "--force"], file_kept


def _summary_of(make: Callable[[Path], Path]) -> Setup:
    return lambda tmp, cli: (["summary", str(make(tmp))], None)


def _on_trained_run(*argv: str) -> Setup:
    """``argv`` with ``{run}`` = a freshly trained 1-epoch run, which must come out unchanged."""

    def setup(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
        out = tmp / "out"
        assert cli(_train_argv(out))[0] == 0
        before = _files(out / "r")
        return [a.format(run=out / "r") for a in argv], lambda: _same_run_files(out / "r", before)

    return setup


def _same_run_files(run: Path, before: dict[str, bytes]) -> None:
    assert _files(run) == before


_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available, so --device cuda is valid")

# Each row: the setup, and the text the one-line message must contain to show it names the mistake
# (the offending option, value or path; ``{tmp}`` is the test's folder).
BAD_INPUTS = [
    pytest.param(_train_with("--epochs", "0"), ("'--epochs'", "greater than or equal to 1"), id="epochs-0"),
    pytest.param(_train_with("--epochs", "abc"), ("'--epochs'", "valid integer"), id="epochs-abc"),
    pytest.param(_train_with("--lr", "0"), ("learning rate must be positive, got 0.0",), id="lr-0"),
    pytest.param(_train_with("--lr", "-1"), ("learning rate must be positive, got -1.0",), id="lr-negative"),
    pytest.param(_train_with("--lr", "fast"), ("'--lr'", "valid number"), id="lr-not-a-number"),
    pytest.param(_train_with("--batch-size", "0"), ("'--batch-size'", "greater than or equal to 1"), id="batch-size-0"),
    pytest.param(
        _train_with("--weight-decay", "-0.1"),
        ("'--weight-decay'", "greater than or equal to 0"),
        id="weight-decay-negative",
    ),
    pytest.param(_train_with("--size", "4"), ("'--size'", "greater than or equal to 8"), id="size-too-small"),
    pytest.param(_train_with("--data", "imagenet"), ("unknown data set 'imagenet'",), id="unknown-data-set"),
    pytest.param(_train_with("--data", "folder:"), ("folder: needs a path",), id="folder-without-path"),
    pytest.param(
        lambda tmp, cli: ([*_train_argv(tmp / "out"), "--data", f"folder:{tmp / 'missing'}"], None),
        ("image folder {tmp}/missing does not exist",),
        id="folder-missing",
    ),
    pytest.param(_folder_with(_a_file), ("{tmp}/file.txt is a file, not a folder",), id="folder-is-a-file"),
    pytest.param(_folder_with(_empty_folder), ("{tmp}/empty has no class subfolders",), id="folder-empty"),
    pytest.param(_folder_with(_one_class_folder), ("{tmp}/imgs has only 1 class",), id="folder-one-class"),
    pytest.param(
        _folder_with(_corrupt_folder), ("cannot read image {tmp}/imgs/class_1/img_02.png",), id="folder-corrupt-image"
    ),
    pytest.param(_train_with("--optimizer", "rmsprop"), ("unknown optimizer 'rmsprop'",), id="unknown-optimizer"),
    pytest.param(_train_with("--device", "tpu"), ("unknown device 'tpu'",), id="unknown-device"),
    pytest.param(
        _train_with("--device", "cuda"),
        ("--device cuda", "CUDA is not available"),
        id="device-cuda-unavailable",
        marks=_CUDA,
    ),
    pytest.param(_existing_run, ("run {tmp}/out/r already exists",), id="run-name-exists"),
    pytest.param(
        lambda tmp, cli: (["train", "--resume", str(tmp / "missing")], None),
        ("run {tmp}/missing does not exist",),
        id="resume-missing",
    ),
    pytest.param(_resume_plain_folder, ("{tmp}/plain is not a featviz run",), id="resume-not-a-run"),
    pytest.param(
        lambda tmp, cli: (["train", "--resume", str(_a_file(tmp))], None),
        ("{tmp}/file.txt is a file, not a run folder",),
        id="resume-a-file",
    ),
    pytest.param(_complete_run, ("run {tmp}/out/r is already complete",), id="resume-complete-run"),
    pytest.param(
        _no_manifest, ("run {tmp}/out/r has no manifest.json", "nothing was changed"), id="resume-without-manifest"
    ),
    pytest.param(
        _complete_with_stray_snapshot,
        ("run {tmp}/out/r is already complete",),
        id="resume-complete-run-with-a-stray-file",
    ),
    pytest.param(_out_is_file, ("output folder {tmp}/file.txt is a file",), id="out-is-a-file"),
    pytest.param(_train_with("--name", "../evil"), ("invalid run name '../evil'",), id="name-escapes"),
    pytest.param(_train_with("--name", "a/b"), ("invalid run name 'a/b'",), id="name-with-slash"),
    pytest.param(_train_with("--widths", "a,b"), ("--widths", "'a,b'"), id="widths-not-integers"),
    pytest.param(_train_with("--kernels", "5"), ("kernels has 1 entries, widths has 2",), id="kernels-length-mismatch"),
    pytest.param(_train_with("--kernels", "4,3"), ("kernels must be odd", "(4, 3)"), id="kernels-even"),
    pytest.param(_train_with("--pools", "maybe,no"), ("--pools", "'maybe,no'"), id="pools-not-booleans"),
    pytest.param(_force_over_a_file, ("{tmp}/out/r exists and is a file, not a run",), id="force-over-a-file"),
    pytest.param(_summary_of(_empty_folder), ("{tmp}/empty is not a featviz run",), id="summary-not-a-run"),
    pytest.param(
        lambda tmp, cli: (["summary", str(tmp / "missing")], None),
        ("run {tmp}/missing does not exist",),
        id="summary-missing",
    ),
    pytest.param(
        lambda tmp, cli: (["summary", "--widths", "x"], None), ("--widths", "got 'x'"), id="summary-bad-widths"
    ),
    pytest.param(_train_with("--no-such-option"), ("No such option: --no-such-option",), id="unknown-option"),
    pytest.param(lambda tmp, cli: (["fly"], None), ("No such command 'fly'",), id="unknown-command"),
    pytest.param(
        lambda tmp, cli: (["data", "preview", "--data", "nope"], None),
        ("unknown data set 'nope'",),
        id="preview-unknown-data",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--layers", "features.conv9"),
        ("--layers 'features.conv9' matches no conv layer",),
        id="render-unknown-layer",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--channels", "99"),
        ("channel 99 out of range for features.conv1",),
        id="render-channel-out-of-range",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--epochs", "5"),
        ("epoch(s) 5 not in the run",),
        id="render-epoch-not-in-run",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--epochs", "every:0"),
        ("bad --moments 'every:0'",),
        id="render-bad-epochs-form",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--size", "1"),
        ("'--size'", "greater than or equal to 8"),
        id="render-size-too-small",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--param", "cppn"),
        ("unknown parametrization 'cppn'",),
        id="render-unknown-param",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--model", "os:system"),
        ("this run's model is featviz's small CNN, not os:system; nothing was imported",),
        id="render-small-cnn-run-with-a-model",
    ),
    pytest.param(
        _on_trained_run("analyze", "{run}", "--device", "gpu"), ("unknown device 'gpu'",), id="analyze-unknown-device"
    ),
    pytest.param(
        lambda tmp, cli: (["import", str(tmp), "--model", "torchvision:resnet18", "--device", "cuda:x"], None),
        ("unknown device 'cuda:x'",),
        id="import-unknown-device",
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--device", "tpu"), ("unknown device 'tpu'",), id="render-unknown-device"
    ),
    pytest.param(
        _on_trained_run("render", "{run}", "--cuda-graph", "maybe"),
        ("unknown cuda_graph 'maybe'; choose one of auto, on, off",),
        id="render-unknown-cuda-graph",
    ),
    pytest.param(
        lambda tmp, cli: (["render", str(_a_file(tmp))], None),
        ("{tmp}/file.txt is a file, not a run folder",),
        id="render-run-is-a-file",
    ),
    pytest.param(
        _on_trained_run("analyze", "{run}", "--probe", "3"),
        ("'--probe'", "greater than or equal to 10"),
        id="analyze-probe-too-small",
    ),
    pytest.param(
        lambda tmp, cli: (["analyze", str(tmp / "missing")], None),
        ("run {tmp}/missing does not exist",),
        id="analyze-missing",
    ),
    pytest.param(
        lambda tmp, cli: (["analyze", str(_empty_folder(tmp))], None),
        ("{tmp}/empty is not a featviz run",),
        id="analyze-not-a-run",
    ),
    pytest.param(
        lambda tmp, cli: (["gallery", str(_a_file(tmp))], None),
        ("{tmp}/file.txt is a file, not a run folder",),
        id="gallery-run-is-a-file",
    ),
    pytest.param(
        lambda tmp, cli: (["check", str(tmp / "missing")], None),
        ("run {tmp}/missing does not exist",),
        id="check-missing",
    ),
    pytest.param(
        lambda tmp, cli: (["check", str(_empty_folder(tmp))], None),
        ("{tmp}/empty is not a featviz run",),
        id="check-not-a-run",
    ),
    pytest.param(
        lambda tmp, cli: (["runs", "--out", str(_a_file(tmp))], None),
        ("output folder {tmp}/file.txt is a file",),
        id="runs-out-is-a-file",
    ),
    pytest.param(
        lambda tmp, cli: (["data", "preview", "--size", "2"], None),
        ("'--size'", "greater than or equal to 8"),
        id="preview-size-too-small",
    ),
    # an option that would be silently ignored is refused, naming it
    pytest.param(
        lambda tmp, cli: (["train", "--resume", str(tmp / "out" / "r"), "--epochs", "3", "--lr", "0.1"], None),
        ("--epochs, --lr: not with --resume", "only --device may change"),
        id="resume-with-new-config",
    ),
    pytest.param(
        _train_with("--model", "torchvision:resnet18", "--no-batchnorm"),
        ("--widths, --kernels, --strides, --pools, --batchnorm: only for the small CNN, not with --model",),
        id="train-model-with-small-cnn-options",
    ),
    pytest.param(_train_with("--pretrained"), ("--pretrained: only with --model",), id="train-pretrained-alone"),
    pytest.param(
        _train_with("--data", "mnist", "--n-val", "50"),
        ("--n-val: only for the generated data sets (--data pairs or shapes)",),
        id="train-n-val-not-shapes",
    ),
    pytest.param(_train_with("--port", "8123"), ("--port: only with --live",), id="train-port-alone"),
    pytest.param(_train_with("--widths", ""), ("--widths", "got ''"), id="train-empty-widths"),
    pytest.param(_train_with("--widths", "4,,8"), ("--widths", "got '4,,8'"), id="train-widths-with-a-hole"),
    pytest.param(_train_with("--name", " "), ("--name is empty",), id="train-empty-name"),
    pytest.param(
        _train_with("--snapshots", "every:2", "--snapshot-every-steps", "3"),
        ("snapshots 'every:2' and snapshot_every_steps 3 disagree",),
        id="train-two-schedules",
    ),
    pytest.param(_on_trained_run("render", "{run}", "--layers", ""), ("--layers is empty",), id="render-empty-layers"),
    pytest.param(_train_with("--trust-run-code"), ("--trust-run-code: only with --resume",), id="train-trust-alone"),
    pytest.param(
        lambda tmp, cli: (["summary", str(tmp / "out" / "r"), "--widths", "8", "--no-batchnorm"], None),
        ("--widths, --batchnorm: not with RUN",),
        id="summary-run-with-config",
    ),
    pytest.param(
        lambda tmp, cli: (["summary", "--model", "torchvision:resnet18", "--kernels", "3"], None),
        ("--kernels: only for the small CNN, not with --model",),
        id="summary-model-with-kernels",
    ),
    pytest.param(
        lambda tmp, cli: (["gallery", str(tmp / "out" / "r"), "--port", "8123"], None),
        ("--port: only with --serve",),
        id="gallery-port-alone",
    ),
    pytest.param(
        lambda tmp, cli: (["summary", "--model-kwargs", "{}"], None),
        ("--model-kwargs: only with --model",),
        id="summary-kwargs-alone",
    ),
]


@pytest.mark.parametrize("setup, expect", BAD_INPUTS)
def test_bad_input_is_one_line_error(setup: Setup, expect: tuple[str, ...], cli, tmp_path: Path) -> None:
    argv, check = setup(tmp_path, cli)
    code, out, err = cli(argv)
    assert_one_line_error(code, out, err)
    for text in expect:  # the message names the mistake, not just "something went wrong"
        assert text.format(tmp=tmp_path) in err, (text, err)
    if check is not None:
        check()
    # nothing half-made: no run folder unless the setup made one, and no temp files anywhere
    if setup not in (
        _existing_run,
        _complete_run,
        _force_over_a_file,
        _no_manifest,
        _complete_with_stray_snapshot,
    ) and argv[0] not in ("render", "analyze"):
        assert not (tmp_path / "out" / "r").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_an_unexpected_error_is_one_line_unless_asked(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception featviz did not foresee (here: a bug raising KeyError while the gallery is built) ends in
    one line naming it; FEATVIZ_TRACEBACK=1 lets the traceback through for a bug report."""
    assert cli(_train_argv(tmp_path / "out"))[0] == 0

    def bug(*_a, **_k):
        raise KeyError("layers")

    monkeypatch.setattr("featviz.gallery.show.build_gallery", bug)
    code, out, err = cli(["gallery", tmp_path / "out" / "r"])
    assert code == 1 and err.startswith("featviz: error: unexpected KeyError: 'layers'") and len(err.splitlines()) == 1
    monkeypatch.setenv("FEATVIZ_TRACEBACK", "1")
    with pytest.raises(KeyError):
        cli(["gallery", tmp_path / "out" / "r"])

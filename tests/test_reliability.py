"""Fault injection: killed training, damaged files, rendering during training, unsafe loading.

Each test would fail if the guarantee it names (README, "Guarantees") broke. Training runs in a
subprocess (``python -m featviz train``) on a tiny PNG folder, so it can be SIGKILLed; featviz's
pause points (``featviz.faults``) stop it at an exact moment first: after optimizer step N, or
half-way through writing a file's temp file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_png_folder
from featviz.config import RenderConfig
from featviz.faults import ENV_AT, ENV_FILE
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.run.check import check_run
from featviz.run.fileio import load_tensors
from featviz.run.store import Run

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
STEPS_PER_EPOCH = 4  # 27 training images of the 30 (10% held out), batches of 8
FAST = dict(settings=RenderSettings(steps=2, size=16))


# ----------------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_AT, ENV_FILE)}
    # one thread, as in the test process: runs compared for equality must use the same thread count
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _train_cmd(data: Path, out: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "featviz",
        "train",
        "--data",
        f"folder:{data}",
        "--size",
        "16",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--widths",
        "4,8",
        "--kernels",
        "5,3",
        "--strides",
        "1,1",
        "--pools",
        "1,0",
        "--out",
        str(out),
        "--name",
        name,
        "--seed",
        "3",
    ]


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=120)


def _start_paused(cmd: list[str], at: str, marker: Path) -> subprocess.Popen:
    """Start ``cmd`` and wait until it sleeps at pause point ``at`` (it wrote its pid to ``marker``)."""
    proc = subprocess.Popen(
        cmd,
        env=_env(**{ENV_AT: at, ENV_FILE: str(marker)}),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before pausing at {at}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"process never reached pause point {at}")
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_png_folder(tmp_path_factory.mktemp("data") / "pngs", classes=3, per_class=10, size=16)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same training, never interrupted."""
    out = tmp_path_factory.mktemp("ref")
    res = _run(_train_cmd(data, out, "ref"))
    assert res.returncode == 0, res.stderr
    return Run.open(out / "ref")


def _assert_every_snapshot_loads(run: Run) -> None:
    for e in run.snapshot_epochs():
        state = run.load_snapshot(e)  # verifies the manifest's sha256, the format, finiteness
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- 1. kill at any moment
# Writes per epoch e: snapshots/epoch_e, state, metrics.jsonl, manifest.json (the commit). Run.create
# writes the first manifest, so epoch 2's metrics are the 3rd metrics write and its manifest the 4th.
KILL_POINTS = [
    pytest.param("step:6", id="mid-epoch-2"),  # 4 steps per epoch: step 6 is inside epoch 2
    pytest.param("write:epoch_002.safetensors", id="during-snapshot-write"),
    pytest.param("write:metrics.jsonl#3", id="during-metrics-write"),
    pytest.param("write:manifest.json#4", id="during-manifest-write"),
]


@pytest.mark.parametrize("at", KILL_POINTS)
def test_sigkill_then_resume_equals_uninterrupted(at: str, data: Path, reference: Run, tmp_path: Path) -> None:
    proc = _start_paused(_train_cmd(data, tmp_path, "r"), at, tmp_path / "paused")
    _kill(proc)
    run = Run.open(tmp_path / "r")
    assert run.epochs_done == 1  # killed inside epoch 2: epochs 0 and 1 are complete
    _assert_every_snapshot_loads(run)
    assert "snapshots/epoch_002.safetensors" not in run.manifest()["files"]
    if at.startswith("write:"):  # killed mid-write: a half temp file exists, and nothing reads it
        name = at.split(":", 1)[1].split("#")[0]
        temps = list(run.path.rglob(f".{name}.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size > 0
        report = check_run(run.path)
        assert report.ok, report.problems
        assert any(str(temps[0]) in n for n in report.notes)
    res = _run([sys.executable, "-m", "featviz", "train", "--resume", str(run.path)])
    assert res.returncode == 0, res.stderr
    run = Run.open(run.path)
    assert run.complete and not list(run.path.rglob("*.tmp"))
    _assert_every_snapshot_loads(run)
    for e in range(EPOCHS + 1):  # restored optimizer, RNG and data order: bit-identical weights
        got, want = run.load_snapshot(e), reference.load_snapshot(e)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), f"epoch {e} differs from the uninterrupted run"
    assert [r["val_loss"] for r in run.metrics()] == [r["val_loss"] for r in reference.metrics()]


# ----------------------------------------------------------------------------- 6. concurrent use
def test_render_while_training_reads_only_complete_epochs(data: Path, tmp_path: Path) -> None:
    proc = _start_paused(_train_cmd(data, tmp_path, "live"), "write:epoch_003.safetensors", tmp_path / "paused")
    try:
        run = Run.open(tmp_path / "live")
        assert run.epochs_done == 2 and list(run.path.rglob(".epoch_003.safetensors.*.tmp"))
        out = render_run(run, RenderConfig(moments="all", **FAST))
        assert out["epochs"] == [0, 1, 2] and not out["skipped"]
        rendered = {r.epoch for r in run.render_index() if r.epoch is not None}
        assert rendered == {0, 1, 2}
        last_committed = run.metrics()[-1]["step"]  # step snapshots of the unfinished epoch are not read
        assert {r.step for r in run.render_index() if r.step is not None} <= set(range(last_committed + 1))
        assert proc.poll() is None  # training was still running (paused) all along
    finally:
        _kill(proc)
    res = _run([sys.executable, "-m", "featviz", "train", "--resume", str(tmp_path / "live")])
    assert res.returncode == 0, res.stderr
    assert Run.open(tmp_path / "live").complete
    assert check_run(tmp_path / "live").ok  # the renders written meanwhile are intact too


# ----------------------------------------------------------------------------- 2. damaged files
def _flip_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x40
    p.write_bytes(bytes(b))


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "checksum"),
    "zero-length": (lambda p: p.write_bytes(b""), "empty"),
    "bit-flipped": (_flip_byte, "checksum"),
    "missing": (lambda p: p.unlink(), "missing"),
}


@pytest.fixture
def damaged_copy(tiny_run: Run, tmp_path: Path) -> Run:
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_run.path, dst)
    return Run.open(dst)


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_snapshot_is_named_and_the_other_epochs_still_work(how: str, damaged_copy: Run, cli) -> None:
    run = damaged_copy
    target = run.snapshot_file(1)
    damage, what = DAMAGE[how]
    damage(target)
    code, out, err = cli(["check", run.path])
    assert code == 1 and target.name in err and what in err
    code, out, err = cli(["render", run.path, "--moments", "1", "--steps", "2", "--size", "16"])
    assert code != 0 and len(err.splitlines()) == 1 and target.name in err and what in err
    assert "Traceback" not in out + err
    code, out, err = cli(["render", run.path, "--moments", "0,2", "--steps", "2", "--size", "16"])
    assert code == 0, err
    assert target.name in err and "warning" in err  # left out of the filter images, and said so
    am = {r.epoch for r in run.render_index() if r.kind == "am"}
    filt = {r.point for r in run.render_index() if r.kind == "filters"}
    assert am == {0, 2} and filt == {"epoch_000", "epoch_002", "step_0000001", "step_0000002", "step_0000004"}
    code, out, err = cli(["analyze", run.path, "--probe", "20"])
    assert code == 0, err
    assert target.name in err
    assert run.read_analysis()["epochs"] == [0, 2]


def test_malformed_run_json_is_named(damaged_copy: Run, cli) -> None:
    (damaged_copy.path / "run.json").write_text('{"configs": {')
    for argv in (
        ["check", damaged_copy.path],
        ["render", damaged_copy.path],
        ["analyze", damaged_copy.path],
        ["summary", damaged_copy.path],
        ["gallery", damaged_copy.path],
    ):
        code, out, err = cli(argv)
        assert code != 0 and "run.json" in err and "not valid JSON" in err, (argv, err)
        assert "Traceback" not in out + err


def test_truncated_last_metrics_line(damaged_copy: Run, cli) -> None:
    p = damaged_copy.path / "metrics.jsonl"
    p.write_bytes(p.read_bytes()[:-20])
    code, out, err = cli(["check", damaged_copy.path])
    assert code == 1 and "metrics.jsonl" in err and "line 3 is damaged" in err
    code, out, err = cli(["render", damaged_copy.path, "--moments", "0,2", "--steps", "2", "--size", "16"])
    assert code == 0, err
    a = analyze_run(damaged_copy, probe_size=20)
    assert a["epochs"] == [0, 1, 2]


def test_edited_metrics_and_manifest_are_reported(damaged_copy: Run, cli) -> None:
    p = damaged_copy.path / "metrics.jsonl"
    p.write_text(p.read_text().replace('"epoch": 1,', '"epoch": 1, "edited": true,'))
    code, out, err = cli(["check", damaged_copy.path])
    assert code == 1 and "metrics.jsonl: checksum does not match" in err
    (damaged_copy.path / "manifest.json").write_text("[]")
    code, out, err = cli(["check", damaged_copy.path])
    assert code == 1 and "manifest.json" in err and "malformed" in err


def test_check_reports_every_problem_and_passes_a_good_run(damaged_copy: Run, cli) -> None:
    code, out, err = cli(["check", damaged_copy.path])
    assert code == 0 and out.startswith("ok:") and not err
    damaged_copy.snapshot_file(0).write_bytes(b"")
    _flip_byte(damaged_copy.snapshot_file(2))
    code, out, err = cli(["check", damaged_copy.path])
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    assert code == 1 and len(problems) == 2
    assert "epoch_000" in problems[0] and "epoch_002" in problems[1]
    assert err.splitlines()[-1] == f"featviz: error: 2 problem(s) in {damaged_copy.path}"


# ----------------------------------------------------------------------------- 7. security
UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|shelve|marshal)\b", re.M), "imports a pickle-like module"),
    (re.compile(r"\bpickle\.\w"), "uses pickle"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"(?<![.\w])eval\("), "calls eval"),
    (re.compile(r"(?<![.\w])exec\("), "calls exec"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy load with pickle"),
]


def test_no_pickle_eval_or_exec_in_the_package() -> None:
    files = [*(ROOT / "featviz").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    assert len(files) > 20
    found = [f"{f.relative_to(ROOT)}: {why}" for f in files for rx, why in UNSAFE if rx.search(f.read_text())]
    assert not found, found


def test_the_security_grep_catches_what_it_looks_for() -> None:
    bad = [
        "import pickle",
        "x = pickle.loads(b)",
        "torch.load(path)",
        "torch.load(p, weights_only=False)",
        "y = eval(s)",
        "exec(code)",
        "np.load(p, allow_pickle=True)",
    ]
    for line in bad:
        assert any(rx.search(line) for rx, _ in UNSAFE), line
    for line in ["model.eval()", "torch.load(p, weights_only=True)", "# never unpickles"]:
        assert not any(rx.search(line) for rx, _ in UNSAFE), line


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/x", "a/./b.png", "..", "a\\..\\b"])
def test_artifact_names_never_leave_the_run(damaged_copy: Run, rel: str) -> None:
    from featviz.errors import RunError

    with pytest.raises(RunError):
        damaged_copy.write_artifact("renders", rel, b"x")
    with pytest.raises(RunError):
        damaged_copy.write_artifact("../outside", "x.png", b"x")
    assert not (damaged_copy.path.parent / "x.png").exists()


def test_unknown_layer_in_render_never_becomes_a_path(damaged_copy: Run, cli) -> None:
    code, out, err = cli(["render", damaged_copy.path, "--layers", "../../evil", "--steps", "2"])
    assert code != 0 and "valid conv layers" in err
    assert not list(damaged_copy.path.parent.rglob("evil*"))


def test_safetensors_never_runs_code(tmp_path: Path) -> None:
    """A pickle file named like a snapshot is rejected as not-safetensors, never unpickled."""

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import pickle as _p  # noqa: F401 - the test builds a hostile pickle; the package never imports it

    p = tmp_path / "epoch_000.safetensors"
    p.write_bytes(_p.dumps(Boom()))
    from featviz.errors import RunError

    with pytest.raises(RunError, match="not a valid safetensors file"):
        load_tensors(p)
    assert not (tmp_path / "pwned").exists()

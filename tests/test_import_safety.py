"""featviz import of hostile checkpoints: pickles refused unread, bounded searches, headers checked before data."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import featviz.run.fileio
from featviz import checkpoint
from featviz.errors import ConfigError
from import_helpers import DATA, _import, _states, _write


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(__file__).parent / "PWNED", "unpickled"))


def test_pickled_objects_are_refused_and_never_run(user_code: Path, tmp_path: Path, cli) -> None:
    folder = _write(tmp_path / "ckpts", "pt", _states(2))
    marker = Path(__file__).parent / "PWNED"
    torch.save({"model": _states(1)[0], "extra": _Evil()}, folder / "step_30.pt")
    code, out, err = cli(["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs"])
    assert code == 1 and "step_30.pt" in err and "refusing to unpickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "runs" / "import-ckpts").exists()


@pytest.fixture
def deadline():
    """``deadline(s)``: the test fails with TimeoutError if it is still running ``s`` seconds later (a
    search that takes exponential time would otherwise hang the suite)."""

    def expire(*_):
        raise TimeoutError("still running at the deadline")

    old = signal.signal(signal.SIGALRM, expire)
    yield lambda s: signal.setitimer(signal.ITIMER_REAL, s)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_nested_dicts_are_searched_in_bounded_time(user_code: Path, tmp_path: Path, deadline) -> None:
    """A state dict a few levels down is found; one nested 40 levels under "model" (a 2 KB file) is a
    one-line error at once, and so is a dict that contains itself."""
    states = _states(2)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for i, sd in enumerate(states):
        torch.save(
            {"epoch": i, "model": {"net": {"state_dict": sd}}, "optimizer": {"state": {}}}, folder / f"step_{i}.pt"
        )
    run = _import(folder, tmp_path)
    assert torch.equal(run.load_snapshot(1)["fc.weight"], states[1]["fc.weight"])
    deep: dict = {"w": torch.zeros(2)}
    for _ in range(40):
        deep = {"model": deep}
    torch.save(deep, folder / "step_2.pt")
    assert (folder / "step_2.pt").stat().st_size < 10_000
    deadline(10)
    with pytest.raises(ConfigError, match=r"step_2\.pt: no state dict within 5 levels") as e:
        _import(folder, tmp_path, name="deep")
    assert len(str(e.value).splitlines()) == 1
    loop: dict = {"epoch": 1}
    loop["model"] = loop
    torch.save(loop, folder / "step_2.pt")
    with pytest.raises(ConfigError, match=r"step_2\.pt: no state dict found"):
        _import(folder, tmp_path, name="loop")


class _System:
    """Unpickling this calls os.system with a command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo ran > {shlex.quote(str(self.marker))}",))


def test_a_pickle_that_calls_os_system_is_refused_by_name(user_code: Path, tmp_path: Path) -> None:
    folder = _write(tmp_path / "ckpts", "pt", _states(2))
    marker = tmp_path / "RAN"
    torch.save({"model": _states(1)[0], "hook": _System(marker)}, folder / "step_30.pt")
    with pytest.raises(ConfigError) as e:
        _import(folder, tmp_path)
    msg = str(e.value)
    assert f"step_30.pt: holds more than plain tensors (its pickle asks for {os.system.__module__}.system)" in msg
    assert "refusing to unpickle" in msg and len(msg.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "runs" / "import-ckpts").exists()


def test_a_damaged_checkpoint_is_described_in_whole_words(user_code: Path, tmp_path: Path) -> None:
    """Torch's long error about a truncated zip is cut at a word boundary and marked, never mid-word."""
    folder = _write(tmp_path / "ckpts", "pt", _states(2))
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pt")  # cut in half, its zip directory is lost
    data = (tmp_path / "whole.pt").read_bytes()
    (folder / "step_10.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as raw:
        torch.load(folder / "step_10.pt", weights_only=True)
    with pytest.raises(ConfigError, match="step_10.pt: not a readable PyTorch checkpoint") as e:
        _import(folder, tmp_path)
    detail = str(e.value).split("torch.save: ", 1)[1].removesuffix(")")
    assert detail.endswith("…") and len(detail) <= 120
    shown, words = detail.removesuffix("…").split(), str(raw.value).split()
    assert shown and shown == words[: len(shown)]


class _SpyOpen:
    """safetensors' safe_open, recording each read of tensor data as (name, index)."""

    reads: ClassVar[list[tuple[str, object]]] = []

    def __init__(self, *args, **kwargs) -> None:
        from safetensors import safe_open

        self._f = safe_open(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def get_tensor(self, name: str) -> torch.Tensor:
        _SpyOpen.reads.append((name, ...))
        return self._f.get_tensor(name)

    def get_slice(self, name: str):
        return _SpySlice(self._f.get_slice(name), name)


class _SpySlice:
    def __init__(self, sl, name: str) -> None:
        self._sl, self._name = sl, name

    def __getattr__(self, name: str):
        return getattr(self._sl, name)

    def __getitem__(self, index):
        _SpyOpen.reads.append((self._name, index))
        return self._sl[index]


def test_safetensors_names_dtypes_and_shapes_are_checked_before_any_data_is_read(
    user_code: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong shape is refused from the header alone; a fitting file is read tensor by tensor, a tensor
    larger than a block in blocks of rows, into the network's own tensors."""
    states = _states()
    states[2]["fc.weight"] = torch.zeros(10, 15)
    folder = _write(tmp_path / "ckpts", "safetensors", states)
    monkeypatch.setattr(featviz.run.fileio, "safe_open", _SpyOpen)  # where every safetensors header is read
    monkeypatch.setattr(_SpyOpen, "reads", [])
    header, _ = checkpoint.open_checkpoint(folder / "weights_00020.safetensors")
    assert header["fc.weight"] == (torch.float32, (10, 15)) and _SpyOpen.reads == []
    net = {k: torch.zeros_like(v) for k, v in states[0].items()}
    with pytest.raises(
        ConfigError, match=r"weights_00020.safetensors: fc.weight is \[10, 15\], the model's is \[10, 16\]"
    ):
        checkpoint.load_checkpoint(folder / "weights_00020.safetensors", net)
    assert _SpyOpen.reads == []  # refused before any tensor data was read
    monkeypatch.setattr(checkpoint, "_BLOCK", 4 * 16 * 4)  # 4 rows of fc.weight [10, 16] float32
    checkpoint.load_checkpoint(folder / "weights_00010.safetensors", net)
    assert all(torch.equal(net[k], states[1][k]) for k in net)
    fc = [index for name, index in _SpyOpen.reads if name == "fc.weight"]
    assert fc == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert {name for name, _ in _SpyOpen.reads} == set(net)


def test_torch_zip_checkpoints_are_memory_mapped(
    user_code: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's zip format is mapped (tensor data read only when used); the legacy format, which cannot
    be, is read whole and imports the same."""
    states = _states(2)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save(states[0], folder / "step_0.pt")
    torch.save(states[1], folder / "step_10.pt", _use_new_zipfile_serialization=False)
    calls: list[tuple[str, bool]] = []
    load = torch.load

    def spy(f, *args, **kwargs):
        calls.append((Path(f).name, kwargs.get("mmap", False)))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    run = _import(folder, tmp_path)
    assert set(calls) == {("step_0.pt", True), ("step_10.pt", False)}
    assert all(torch.equal(run.load_snapshot(i)[k], sd[k]) for i, sd in enumerate(states) for k in sd)

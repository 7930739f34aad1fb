"""optvis.memory.big_buffers: glibc's thresholds raised for a render and set back afterwards."""

from __future__ import annotations

import sys

import pytest

from featviz.optvis import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: fake)
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(key, raising=False)
    return fake


def test_raised_for_the_block_and_restored_after(libc: FakeLibc) -> None:
    with memory.big_buffers() as raised:
        assert raised
        assert libc.calls == [("mallopt", -3, 1 << 30), ("mallopt", -1, 1 << 30)]
        with memory.big_buffers():  # nested (a render inside a render): no second raise, no early restore
            pass
        assert len(libc.calls) == 2
    assert libc.calls[2:] == [("mallopt", -3, 32 << 20), ("mallopt", -1, 64 << 20), ("trim", 0)]


def test_restored_after_an_error(libc: FakeLibc) -> None:
    with pytest.raises(KeyboardInterrupt):
        with memory.big_buffers():
            raise KeyboardInterrupt
    assert libc.calls[-1] == ("trim", 0) and memory._depth == 0 and not memory._raised


def test_left_alone_when_the_user_chose_or_off(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    with memory.big_buffers(enabled=False) as raised:
        assert not raised
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    with memory.big_buffers() as raised:
        assert not raised
    assert libc.calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._libc() is None, reason="needs glibc")
def test_real_glibc_round_trip() -> None:
    with memory.big_buffers() as raised:
        assert raised
        buf = bytearray(64 << 20)  # a big buffer comes from the heap while raised
        del buf
    assert not memory._raised


def test_a_cpu_render_runs_inside_the_block(libc: FakeLibc) -> None:
    from torch import nn

    from featviz.optvis import maximize_channels

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    maximize_channels(model, "0", size=16, steps=2)
    assert ("mallopt", -3, 1 << 30) in libc.calls and libc.calls[-1] == ("trim", 0)


def test_a_refused_raise_is_reported_and_nothing_restored(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libc, "mallopt", lambda p, v: libc.calls.append(("mallopt", p, v)) or 0)
    with memory.big_buffers() as raised:
        assert not raised
    assert all(c[0] == "mallopt" and c[2] == 1 << 30 for c in libc.calls)  # tried, refused, left alone
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    libc.calls.clear()
    with memory.big_buffers() as raised:
        assert not raised and libc.calls == []

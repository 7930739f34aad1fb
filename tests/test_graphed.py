"""The captured-step loop (featviz.optvis.graphed): the same images as the eager loop, on any device.

On a CPU the capture is ``graphed.rerun`` (each replay runs the step again with the random sources in
replay mode), which checks everything a CUDA graph relies on except the graph itself: the per-step
random numbers refilled into fixed buffers in the right order, gradients zeroed in place, the trace
copied out of a reused output buffer. The CUDA test runs only where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from featviz.config import ModelConfig, render_settings
from featviz.errors import ConfigError
from featviz.model import build_model
from featviz.optvis import graphed, maximize_channels
from featviz.optvis.rng import ElementRandom
from featviz.optvis.transforms import jitter

KW = {"size": 24, "steps": 12, "chunk": 4}
CHANS = [0, 3, 5, 6, 9]  # two chunks, the second short


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(), seed=0).eval()


@pytest.fixture
def cpu_graphs(monkeypatch):
    """Capture on CPU with the stand-in, as CUDA would with a real graph."""
    monkeypatch.setitem(graphed.CAPTURES, "cpu", graphed.rerun)


def _same(a, b):
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.trace, b.trace) and a.trace_steps == b.trace_steps


@pytest.mark.parametrize("transforms", ["standard", "none"])
def test_captured_loop_gives_the_eager_images(model, cpu_graphs, transforms):
    eager = maximize_channels(model, "features.conv2", CHANS, transforms=transforms, cuda_graph=False, **KW)
    graph = maximize_channels(model, "features.conv2", CHANS, transforms=transforms, **KW)
    assert eager.settings["resolved"]["cuda_graph"] == "off"
    assert graph.settings["resolved"]["cuda_graph"] == "graph"
    _same(eager, graph)
    assert len(graph.trace_steps) == 2 and graph.trace_steps[-1] == KW["steps"] - 1


def test_replays_use_fresh_random_numbers(model, cpu_graphs, monkeypatch):
    """If a replay reused the capture's numbers (no refill), the images would differ from eager ones."""
    eager = maximize_channels(model, "features.conv2", CHANS, cuda_graph=False, **KW)
    monkeypatch.setattr(graphed.Replayable, "refill", lambda self: setattr(self, "_i", 0))
    stale = maximize_channels(model, "features.conv2", CHANS, **KW)
    assert not torch.equal(eager.images, stale.images)


def test_a_failed_capture_falls_back_to_the_eager_loop(model, monkeypatch):
    def broken(step):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setitem(graphed.CAPTURES, "cpu", broken)
    eager = maximize_channels(model, "features.conv2", CHANS, cuda_graph=False, **KW)
    fell = maximize_channels(model, "features.conv2", CHANS, **KW)
    _same(eager, fell)
    assert fell.settings["resolved"]["cuda_graph"] == (
        "eager: capture failed (RuntimeError: operation not permitted when stream is capturing)"
    )


def test_too_few_steps_to_capture(model, cpu_graphs):
    res = maximize_channels(model, "features.conv2", [1], **{**KW, "steps": graphed.WARMUP})
    assert res.settings["resolved"]["cuda_graph"] == "eager: too few steps to capture"


def test_when_the_loop_is_not_captured(model, cpu_graphs):
    on_cpu = maximize_channels(model, "features.conv2", [1], **{**KW, "steps": 5})
    assert on_cpu.settings["resolved"]["cuda_graph"] == "graph"
    graphed.CAPTURES.pop("cpu")
    asked = maximize_channels(model, "features.conv2", [1], cuda_graph=True, **{**KW, "steps": 5})
    assert asked.settings["resolved"]["cuda_graph"] == "off: CUDA graphs need a CUDA device, the model is on cpu"
    graphed.CAPTURES["cpu"] = graphed.rerun
    custom = maximize_channels(model, "features.conv2", [1], transforms=jitter(1, rng=0), **{**KW, "steps": 5})
    assert custom.settings["resolved"]["cuda_graph"].startswith("off: a custom param or transform")
    handle = model.features.relu1.register_forward_hook(lambda *a: None)
    try:
        hooked = maximize_channels(model, "features.conv2", [1], **{**KW, "steps": 5})
    finally:
        handle.remove()
    assert hooked.settings["resolved"]["cuda_graph"] == "off: the model has hooks, which a graph replay would not call"


def test_switch_values_are_checked(model):
    with pytest.raises(ConfigError, match="cuda_graph must be True, False or None"):
        maximize_channels(model, "features.conv2", [1], cuda_graph="yes", **KW)
    with pytest.raises(ConfigError, match="unknown cuda_graph 'maybe'"):
        render_settings(cuda_graph="maybe")


def test_replayable_serves_the_wrapped_stream():
    ref, src = ElementRandom([1, 2], block=8), graphed.Replayable(ElementRandom([1, 2], block=8))
    want = [ref.uniform(2, 3, torch.device("cpu")).clone() for _ in range(4)]
    src.draw()
    first = src.uniform(2, 3, torch.device("cpu"))
    assert torch.equal(first, want[0])
    src.read()
    assert src.uniform(2, 3, torch.device("cpu")) is first  # the capture reads the buffer
    with pytest.raises(RuntimeError, match="drew more random numbers"):
        src.uniform(2, 3, torch.device("cpu"))
    for expected in want[1:]:  # each refill: the next numbers, into the same buffer (a block refill included)
        src.refill()
        assert torch.equal(first, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_matches_the_eager_loop_on_a_gpu(model):
    gpu = build_model(ModelConfig(), seed=0).eval().cuda()
    kw = {**KW, "steps": 32}
    eager = maximize_channels(gpu, "features.conv2", CHANS, cuda_graph=False, **kw)
    graph = maximize_channels(gpu, "features.conv2", CHANS, **kw)
    assert graph.settings["resolved"]["cuda_graph"] == "graph"
    assert (eager.images - graph.images).abs().max() < 1e-3
    assert torch.allclose(eager.values, graph.values, rtol=1e-3, atol=1e-3)

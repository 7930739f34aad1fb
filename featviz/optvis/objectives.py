"""Objectives: what activation maximization maximizes, composable like numbers.

Contract: an :class:`Objective` maps the captured activations ``acts`` (``{dotted layer name:
Tensor[B, C, H, W]}``, or ``[B, C]`` for linear layers) to ONE value per batch element,
``Tensor[B]``, to be MAXIMIZED, and names the layers it needs (``objective.layers``), so the
renderer hooks exactly those. Objectives combine with numbers and each other, e.g.
``0.8 * channel("features.conv3", 7) - 0.2 * channel("features.conv3", 9)``. ``parse`` reads the
CLI's string form: ``"L:7"`` (channel), ``"L:7@2,3"`` (neuron at x=2, y=3), ``"L"`` (whole layer,
DeepDream), and sums/differences with numeric factors (``"L:7 - 0.5*L:9"``); a recursive descent
parser, nothing is evaluated as Python. Every user mistake is a one-line ConfigError.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from featviz.errors import ConfigError

Acts = Mapping[str, Tensor]
Number = Union[int, float]

__all__ = ["Objective", "channel", "neuron", "layer_objective", "direction", "diversity", "parse"]


class Objective:
    """``fn(acts) -> Tensor[B]`` (larger is better) plus the set of layer names ``fn`` reads."""

    def __init__(
        self,
        fn: Callable[[Acts], Tensor],
        layers: Iterable[str],
        name: str = "objective",
        selects: tuple[str, int | Tensor] | None = None,
    ) -> None:
        layers = [layers] if isinstance(layers, str) else list(layers)  # one name, not its characters
        bad = next((n for n in layers if not isinstance(n, str)), None)
        if bad is not None:
            raise ConfigError(f"layer names are strings (PyTorch's dotted module names), got {bad!r}")
        self.fn = fn
        self.layers: frozenset[str] = frozenset(layers)
        self.name = name
        # (layer, channel or channels [B]) when the objective is exactly a channel mean: the renderer may
        # then compute only that channel of the layer (``fastpath.select_channels``). Arithmetic drops it.
        self.selects = selects

    def __call__(self, acts: Acts) -> Tensor:
        """Values [B] (float) for the batch whose activations are ``acts``."""
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other: Objective | Number) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}")
        if isinstance(other, (int, float)):  # lets sum([...]) start from 0; a constant moves nothing
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other:g}")
        return NotImplemented

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda a: -self(a), self.layers, f"-({self.name})")

    def __sub__(self, other: Objective | Number) -> Objective:
        if not isinstance(other, (Objective, int, float)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: Number) -> Objective:
        return (-self) + other

    def __mul__(self, other: Objective | Number) -> Objective:
        if isinstance(other, Objective):  # elementwise product, e.g. activation * cosine
            return Objective(
                lambda a: self(a) * other(a), self.layers | other.layers, f"({self.name}) * ({other.name})"
            )
        if isinstance(other, (int, float)):
            w = float(other)
            return Objective(lambda a: w * self(a), self.layers, f"{w:g} * ({self.name})")
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: Number) -> Objective:
        if not isinstance(other, (int, float)):
            return NotImplemented
        if other == 0:
            raise ConfigError("cannot divide an objective by zero")
        return self * (1.0 / other)


# ---------------------------------------------------------------------- constructors
def _layer_act(acts: Acts, layer: str) -> Tensor:
    act = acts[layer]
    if not isinstance(act, Tensor) or act.dim() not in (2, 4):
        shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise ConfigError(f"layer {layer!r} gives {shape}; objectives need [B, C, H, W] or [B, C] outputs")
    return act


def _per_device(t: Tensor) -> Callable[[torch.device, torch.dtype], Tensor]:
    """``get(device, dtype)``: ``t`` there, copied once per (device, dtype), so an objective's constants
    cause no host-to-device copy per step (none may happen inside a captured CUDA graph)."""
    copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def get(device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in copies:
            copies[key] = t.to(device, dtype)
        return copies[key]

    return get


def _check_channel(layer: str, cmax: int, act: Tensor) -> None:
    if cmax >= act.shape[1]:
        raise ConfigError(f"channel {cmax} out of range for layer {layer!r} with {act.shape[1]} channels")


def _channel_index(c: int | Tensor) -> tuple[int | Tensor, int]:
    """Validate ``c`` (int, or LongTensor [B]) and return it with its largest value."""
    if isinstance(c, Tensor):
        if c.dim() != 1 or c.dtype not in (torch.int64, torch.int32) or c.numel() == 0:
            raise ConfigError("a batched channel index must be a non-empty 1-D integer tensor [B]")
        lo, hi = int(c.min()), int(c.max())
        if lo < 0:
            raise ConfigError(f"channel index must be >= 0, got {lo}")
        return c.long(), hi
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ConfigError(f"channel index must be a non-negative integer, got {c!r}")
    if c >= MAX_CHANNEL:
        raise ConfigError(f"channel index {c} is out of range")
    return c, c


MAX_CHANNEL = 2**31  # above any layer's channel count, and within every index type


class _ChannelMean(torch.autograd.Function):
    """Mean over space of channel ``idx[b]`` of element b: [B, C, *S] -> [B].

    The gradient (``g[b] / |S|`` at channel ``idx[b]``, 0 elsewhere) is written once, in the
    activation's own memory format; autograd's indexing path would build it in NCHW, which a
    channels-last conv backward must then transpose-copy (cost: ``benchmarks/README.md``).
    """

    @staticmethod
    def forward(ctx, act: Tensor, idx: Tensor) -> Tensor:  # noqa: D102
        ctx.shape, ctx.strides = act.shape, act.stride()
        ctx.save_for_backward(idx)
        return act[torch.arange(act.shape[0], device=act.device), idx].flatten(1).mean(1)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (idx,) = ctx.saved_tensors
        b, c = ctx.shape[:2]
        spatial = ctx.shape[2:].numel()
        w = torch.zeros(b, c, dtype=g.dtype, device=g.device)
        w[torch.arange(b, device=g.device), idx] = g / spatial
        grad = torch.empty_strided(ctx.shape, ctx.strides, dtype=g.dtype, device=g.device)
        grad.copy_(w.view(b, c, *([1] * (len(ctx.shape) - 2))).expand(ctx.shape))
        return grad, None


def channel(layer: str, c: int | Tensor) -> Objective:
    """Mean activation of channel ``c`` over space.

    ``c`` is an int, or a LongTensor [B] giving one channel per batch element (batched rendering:
    element b maximizes channel ``c[b]``). Values [B], in the layer's activation units.
    """
    idx, cmax = _channel_index(c)
    batched = isinstance(idx, Tensor)
    idx_on = _per_device(idx) if batched else None

    def fn(acts: Acts) -> Tensor:
        act = _layer_act(acts, layer)
        _check_channel(layer, cmax, act)
        if not batched:
            sel = act[:, idx]
        else:
            if idx.numel() != act.shape[0]:
                raise ConfigError(f"{idx.numel()} channel indices for a batch of {act.shape[0]}")
            where = idx_on(act.device, idx.dtype)
            if act.dim() == 2:
                return act[torch.arange(act.shape[0], device=act.device), where]
            return _ChannelMean.apply(act, where)
        return sel.flatten(1).mean(1) if sel.dim() > 1 else sel

    return Objective(fn, [layer], f"{layer}:{c if not batched else 'batch'}", selects=(layer, idx))


def neuron(layer: str, c: int, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel ``c`` at column ``x``, row ``y`` (default: the centre, H//2, W//2). Values [B]."""
    idx, cmax = _channel_index(c)
    for v, what in ((x, "x"), (y, "y")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"neuron {what} must be a non-negative integer, got {v!r}")

    def fn(acts: Acts) -> Tensor:
        act = _layer_act(acts, layer)
        _check_channel(layer, cmax, act)
        if act.dim() != 4:
            raise ConfigError(f"neuron objectives need a spatial layer; {layer!r} gives {tuple(act.shape)}")
        h, w = act.shape[-2:]
        xx, yy = w // 2 if x is None else x, h // 2 if y is None else y
        if xx >= w or yy >= h:
            raise ConfigError(f"neuron position x={xx}, y={yy} outside {layer!r}'s {w}x{h} map")
        return act[:, idx, yy, xx]

    return Objective(fn, [layer], f"{layer}:{c}@{x},{y}")


def layer_objective(layer: str) -> Objective:
    """DeepDream: mean of the squared activations of the whole layer. Values [B] >= 0."""
    return Objective(lambda a: _layer_act(a, layer).pow(2).flatten(1).mean(1), [layer], layer)


def direction(layer: str, vec: Tensor, cosine: bool = False) -> Objective:
    """Mean over space of the dot product of the activation vector with ``vec`` [C].

    With ``cosine`` the dot product is divided by both norms, so values lie in [-1, 1].
    """
    if not isinstance(vec, Tensor) or vec.dim() != 1:
        raise ConfigError("direction needs a 1-D tensor [C]")
    v = vec.detach().float()
    v_on = _per_device(v)

    def fn(acts: Acts) -> Tensor:
        act = _layer_act(acts, layer)
        if act.shape[1] != v.numel():
            raise ConfigError(f"direction has {v.numel()} entries; layer {layer!r} has {act.shape[1]} channels")
        vv = v_on(act.device, act.dtype).view(1, -1, *([1] * (act.dim() - 2)))
        dot = (act * vv).sum(1)
        if cosine:
            dot = dot / (act.norm(dim=1) * vv.norm() + 1e-8)
        return dot.flatten(1).mean(1) if dot.dim() > 1 else dot

    return Objective(fn, [layer], f"direction({layer}{', cosine' if cosine else ''})")


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of element b's Gram matrix to the other elements' ones.

    Values [B] in [-1, 1] (0 for a batch of one); adding it pushes a batch's images apart in style.
    """

    def fn(acts: Acts) -> Tensor:
        act = _layer_act(acts, layer)
        b = act.shape[0]
        if b < 2:
            return act.flatten(1).sum(1) * 0  # zero, and still a function of the image
        flat = act.flatten(2) if act.dim() > 2 else act.unsqueeze(2)  # [B, C, HW]; [B, C, 1] for a vector
        gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[-1]
        g = F.normalize(gram.flatten(1), dim=1)
        sim = g @ g.T
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    return Objective(fn, [layer], f"diversity({layer})")


# ---------------------------------------------------------------------- parser
_TOKEN = re.compile(r"\s*(?:(?P<word>(?:[A-Za-z0-9_]|\.\d)[A-Za-z0-9_.]*)|(?P<op>[-+*/:@,()]))")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)$")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"objective {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        kind = "word" if m.group("word") else "op"
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := '-' unary | NUMBER | atom | '(' expr ')' ; atom := NAME [':' INT ['@' INT ',' INT]].

    A word is a number when it looks like one and no ':' follows it, so all-digit layer names
    (``nn.Sequential`` children such as ``"2"``) work in the ``"2:5"`` forms.
    """

    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text, _tokenize(text), 0

    def fail(self, what: str) -> ConfigError:
        where = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text.rstrip())
        return ConfigError(f"objective {self.text!r}: {what} at {where}")

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, op: str | None = None) -> tuple[str, str, int]:
        if self.i >= len(self.toks) or (op is not None and self.toks[self.i][1] != op):
            raise self.fail(f"expected {op!r}" if op else "unexpected end")
        self.i += 1
        return self.toks[self.i - 1]

    def expr(self) -> Objective | float:
        val = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            val = val + rhs if op == "+" else val - rhs
        return val

    def term(self) -> Objective | float:
        val = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "/" and not isinstance(rhs, float):
                raise self.fail("can only divide by a number")
            val = val * rhs if op == "*" else val / rhs
        return val

    def unary(self) -> Objective | float:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "(":
            self.take()
            val = self.expr()
            self.take(")")
            return val
        kind, word, _ = self.take()
        if kind != "word":
            self.i -= 1
            raise self.fail(f"unexpected {word!r}")
        if _NUMBER.match(word) and self.peek() != ":":
            return float(word)
        return self.atom(word)

    def integer(self) -> int:
        kind, word, _ = self.take()
        if kind != "word" or not word.isdigit():
            self.i -= 1
            raise self.fail("expected a non-negative integer")
        return int(word)

    def atom(self, layer: str) -> Objective:
        if layer.endswith(".") or ".." in layer:
            raise self.fail(f"bad layer name {layer!r}")
        if self.peek() != ":":
            return layer_objective(layer)
        self.take(":")
        c = self.integer()
        if self.peek() != "@":
            return channel(layer, c)
        self.take("@")
        x = self.integer()
        self.take(",")
        return neuron(layer, c, x, self.integer())


def parse(text: str) -> Objective:
    """Parse the CLI form (see the module docstring) into an Objective; ConfigError on anything else."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("objective is empty; expected e.g. 'features.conv3:7'")
    p = _Parser(text)
    val = p.expr()
    if p.i != len(p.toks):
        raise p.fail(f"unexpected {p.toks[p.i][1]!r}")
    if not isinstance(val, Objective):
        raise ConfigError(f"objective {text!r} names no layer")
    return val

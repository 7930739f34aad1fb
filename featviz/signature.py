"""A state dict's tensors as (name, shape, dtype): how featviz tells that two state dicts hold one network.

A run's snapshots must all load into the run's network: the recorder compares every snapshot's signature
with the first one's before writing it, and render sets aside a snapshot whose tensors differ from the
network's. Taking and comparing a signature reads no tensor data.
"""

from __future__ import annotations

import torch

Signature = tuple[tuple[str, tuple[int, ...], "torch.dtype | None"], ...]


def signature(state: dict[str, torch.Tensor], dtypes: bool = True) -> Signature:
    """(name, shape, dtype) of every tensor of ``state``, in its order; dtype None unless ``dtypes``
    (loading casts values, so a loader cares only about names and shapes)."""
    return tuple((k, tuple(t.shape), t.dtype if dtypes else None) for k, t in state.items())


def first_difference(a: Signature, b: Signature) -> tuple[str, str, str] | None:
    """The first tensor whose shape or dtype differs between ``a`` and ``b``, or that only one of them
    has, as (name, its kind in a, its kind in b), each kind in words ("[8, 3, 3, 3] float32", "absent");
    None when only their order differs (state dicts are stored and loaded by name)."""
    in_a, in_b = {k: (s, d) for k, s, d in a}, {k: (s, d) for k, s, d in b}
    for key in [*in_a, *in_b]:
        if in_a.get(key) != in_b.get(key):
            return key, _words(in_a.get(key)), _words(in_b.get(key))
    return None


def _words(kind: tuple[tuple[int, ...], torch.dtype | None] | None) -> str:
    if kind is None:
        return "absent"
    shape, dtype = kind
    return str(list(shape)) + ("" if dtype is None else " " + str(dtype).removeprefix("torch."))

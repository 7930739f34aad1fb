"""Numbers behind the pictures (see SCIENCE.md). Tensors and configs in, numbers out; no files."""

from __future__ import annotations

from typing import Sequence


def theoretical_receptive_fields(kernels: Sequence[int], strides: Sequence[int], pools: Sequence[bool]) -> list[int]:
    """Receptive field (px) of one unit at each conv depth's output: r = 1 + sum (k_l - 1) * prod_{m<l} s_m.

    Each depth is conv(k, s) followed, when pooled, by a 2x2 stride-2 max-pool; the field of depth d
    is taken at the conv output (before that depth's pool).
    """
    r, jump, out = 1, 1, []
    for k, s, pool in zip(kernels, strides, pools):
        r += (k - 1) * jump
        jump *= s
        out.append(r)
        if pool:
            r += (2 - 1) * jump
            jump *= 2
    return out

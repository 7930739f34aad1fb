"""featviz.circuits against answers computed by hand: folding, top-k, input share, wired-at, expanded
weights, NMF."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featviz.circuits import (
    expanded_weights,
    fold_batchnorm,
    folded_weight,
    glyphs,
    input_share,
    kernel_strengths,
    nmf,
    one_sided_nmf,
    top_inputs,
    top_outputs,
    wired_at,
)


def _full_conv(w2: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """E[o, i, u, v] = sum_m sum_{p+a=u, q+b=v} w2[o, m, p, q] w1[m, i, a, b], by loops."""
    o, m, k2, _ = w2.shape
    _, i, k1, _ = w1.shape
    e = torch.zeros(o, i, k1 + k2 - 1, k1 + k2 - 1, dtype=torch.float64)
    for p in range(k2):
        for q in range(k2):
            for a in range(k1):
                for b in range(k1):
                    e[:, :, p + a, q + b] += torch.einsum("om,mi->oi", w2[:, :, p, q].double(), w1[:, :, a, b].double())
    return e


def test_two_convs_with_nothing_between_expand_to_the_convolution_of_their_kernels():
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
    e = expanded_weights([c1, c2], 3)
    assert e.shape == (5, 3, 5, 5)
    assert torch.allclose(e, _full_conv(c2.weight, c1.weight), atol=1e-10)


def test_unequal_kernels_and_no_padding_expand_the_same_way():
    torch.manual_seed(1)
    c1, c2 = nn.Conv2d(2, 3, 5, bias=False), nn.Conv2d(3, 2, 3, bias=False)
    assert torch.allclose(expanded_weights([c1, c2], 2), _full_conv(c2.weight, c1.weight), atol=1e-10)


def test_an_identity_conv_passes_the_weights_through():
    torch.manual_seed(2)
    ident = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        ident.weight.zero_()
        for c in range(4):
            ident.weight[c, c, 1, 1] = 1.0
    conv = nn.Conv2d(4, 6, 3, padding=1)
    e = expanded_weights([ident, conv], 4)
    assert torch.allclose(e, conv.weight.double(), atol=1e-12)
    assert torch.allclose(expanded_weights([conv], 4), conv.weight.double(), atol=1e-12)


def test_relu_is_the_identity_and_max_pool_an_average_pool():
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
    with_relu = expanded_weights([c1, nn.ReLU(), c2], 2)
    assert torch.allclose(with_relu, expanded_weights([c1, c2], 2), atol=1e-12)
    pooled = expanded_weights([nn.MaxPool2d(2), c2], 3)  # each weight spread evenly over its 2x2 block
    assert pooled.shape == (2, 3, 6, 6)
    assert torch.allclose(pooled, c2.weight.double().repeat_interleave(2, 2).repeat_interleave(2, 3) / 4, atol=1e-12)


def test_a_module_with_no_linear_rule_is_refused_by_name():
    with pytest.raises(ValueError, match="Sigmoid"):
        expanded_weights([nn.Conv2d(1, 1, 3), nn.Sigmoid()], 1)


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3.0)
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_a_batchnorm_folded_conv_gives_conv_then_batchnorm_in_eval_mode(bias):
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=bias), _bn(5)
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batchnorm(conv, bn)
    assert torch.allclose(folded(x), bn(conv(x)), atol=1e-5)
    assert fold_batchnorm(conv, None).weight.equal(conv.weight)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # the scale multiplies each output's kernel
    assert torch.allclose(folded.weight, conv.weight * scale.view(-1, 1, 1, 1), atol=1e-6)


def test_top_inputs_return_the_planted_inputs_strongest_first():
    w = torch.full((2, 6, 3, 3), 0.01)
    w[0, 4] = 3.0
    w[0, 1] = 2.0
    w[0, 5, 0, 0] = 1.5
    assert [i for i, _ in top_inputs(w, 0, k=3)] == [4, 1, 5]
    norms = dict(top_inputs(w, 0, k=3))
    assert norms[4] == pytest.approx(9.0) and norms[1] == pytest.approx(6.0)
    assert norms[5] == pytest.approx(math.sqrt(1.5**2 + 8 * 0.01**2))
    assert [o for o, _ in top_outputs(w, 4, k=2)] == [0, 1]


def test_grouped_convs_rank_only_the_inputs_a_unit_sees():
    w = torch.zeros(4, 2, 1, 1)  # groups=2: units 0-1 see inputs 0-1, units 2-3 see inputs 2-3
    w[0, 1] = 5.0
    w[2, 0] = 7.0  # unit 2's first input is input channel 2
    w[3, 1] = 1.0
    s = kernel_strengths(w, groups=2)
    assert s.shape == (4, 4) and s[0, 2:].abs().sum() == 0 and s[2, 2] == 7.0
    assert top_inputs(w, 2, k=1, groups=2) == [(2, 7.0)]
    assert [i for i, _ in top_inputs(w, 0, k=5, groups=2)] == [1, 0]  # only two inputs exist for it
    assert [o for o, _ in top_outputs(w, 3, k=4, groups=2)] == [3, 2]  # input 3 is read by units 2-3 only


def test_input_share_is_the_top_k_squared_norms_over_all():
    w = torch.zeros(2, 4, 1, 1)
    w[0, :, 0, 0] = torch.tensor([3.0, 1.0, 1.0, 1.0])
    w[1, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    share = input_share(w, k=1)
    assert share[0] == pytest.approx(9 / 12) and share[1] == pytest.approx(1 / 4)
    assert input_share(w, k=2)[0] == pytest.approx(10 / 12)
    assert input_share(w * torch.tensor([7.0, 0.5]).view(2, 1, 1, 1), k=1).tolist() == pytest.approx(share.tolist())
    assert torch.isnan(input_share(torch.zeros(1, 3, 1, 1), k=1)).all()
    assert input_share(w, k=9).tolist() == [1.0, 1.0]


def test_wired_at_is_the_first_step_from_which_the_set_stays_final():
    a, b = frozenset({1, 2}), frozenset({1, 3})
    assert wired_at([a, b, a, a], [0, 10, 20, 30]) == 20
    assert wired_at([a, a, a], [0, 5, 9]) == 0
    assert wired_at([a, a, b], [0, 5, 9]) == 9
    assert wired_at([b, a, b, a], [0, 1, 2, 3]) == 3
    with pytest.raises(ValueError):
        wired_at([a], [0, 1])


def test_nmf_reconstructs_a_planted_non_negative_matrix():
    g = torch.Generator().manual_seed(5)
    a0, b0 = torch.rand(12, 3, generator=g, dtype=torch.float64), torch.rand(3, 40, generator=g, dtype=torch.float64)
    m = a0 @ b0
    a, b = nmf(m, 3, iters=600)
    assert (a >= 0).all() and (b >= 0).all()
    assert float((m - a @ b).norm() / m.norm()) < 1e-3
    with pytest.raises(ValueError):
        nmf(-m, 3)


def test_one_sided_nmf_splits_signs_and_reconstructs_planted_weights():
    g = torch.Generator().manual_seed(6)
    factors = torch.rand(8, 3, generator=g, dtype=torch.float64)  # 8 input channels in 3 groups
    pos = torch.rand(3, 5 * 9, generator=g, dtype=torch.float64)
    w = (factors @ pos).reshape(8, 5, 3, 3).permute(1, 0, 2, 3)  # [out 5, in 8, 3, 3], all >= 0
    r = one_sided_nmf(-w, iters=800)  # all negative: the positive part is empty
    assert r.relative_error < 1e-3
    assert r.positive.abs().max() < 1e-9 and r.negative.shape == (5, 3, 3, 3)
    back = torch.einsum("if,ofhw->oihw", r.input_factors, r.negative)
    assert torch.allclose(back, w, atol=1e-3 * float(w.abs().max()))
    small = one_sided_nmf(torch.randn(4, 2, 3, 3))  # fewer inputs than factors: the third factor is empty
    assert small.input_factors.shape == (2, 3) and small.positive[:, 2].abs().max() == 0


def test_glyphs_are_white_where_no_factor_loads_and_coloured_where_one_does():
    parts = torch.zeros(1, 3, 1, 2)
    parts[0, 0, 0, 1] = 1.0  # factor 1 fully on at the second position
    img = glyphs(parts)
    assert img.shape == (1, 1, 2, 3) and img.dtype == torch.uint8
    assert img[0, 0, 0].tolist() == [255, 255, 255]
    want = [0.85 * 255, 0.2 * 255, 0.1 * 255]  # factor 1's colour, to rounding
    assert all(abs(v - w) <= 0.51 for v, w in zip(img[0, 0, 1].tolist(), want))
    assert glyphs(parts * 0.5)[0, 0, 1].tolist() == img[0, 0, 1].tolist()  # one scale: the largest loading
    assert glyphs(parts * 0.5, scale=1.0)[0, 0, 1, 0] == round(255 - 0.5 * 0.15 * 255)


def test_folded_weight_scales_each_output_channel_and_bad_groups_are_refused():
    w = torch.ones(3, 2, 1, 1)
    s = torch.tensor([2.0, 0.5, -1.0])
    assert folded_weight(w, s)[:, 0, 0, 0].tolist() == [2.0, 0.5, -1.0]
    assert folded_weight(w).equal(w.double())
    with pytest.raises(ValueError, match="does not divide"):
        kernel_strengths(torch.ones(4, 1, 1, 1), groups=3)
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))


def test_grouped_rankings_stay_inside_the_group():
    w = torch.zeros(4, 2, 1, 1)  # groups=2: units 0-1 see inputs 0-1, units 2-3 see inputs 2-3
    w[3, 0] = 2.0
    w[0, 1] = 5.0
    assert [i for i, _ in top_inputs(w, 3, k=5, groups=2)] == [2, 3]  # never inputs 0-1
    assert [o for o, _ in top_outputs(w, 1, k=5, groups=2)] == [0, 1]  # never units 2-3
    assert input_share(w * 1e-3, k=1, groups=2)[0] == pytest.approx(1.0)  # small weights: a ratio all the same


def test_a_strided_max_pool_expands_as_an_average_pool_of_its_own_stride():
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 1, 1, bias=False)
    e = expanded_weights([nn.MaxPool2d(3, stride=1, padding=1), conv], 2)
    assert e.shape == (1, 2, 3, 3) and torch.allclose(e, conv.weight.double().expand(1, 2, 3, 3) / 9, atol=1e-12)


def test_edge_cases_of_the_expanded_weights_nmf_and_glyphs():
    torch.manual_seed(8)
    c1, c2 = nn.Conv2d(2, 5, 3, padding=1), nn.Conv2d(5, 7, 3, padding=1)
    assert torch.allclose(expanded_weights([c1, c2], 2, chunk=2), expanded_weights([c1, c2], 2), atol=1e-12)  # chunks
    zero = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        zero.weight.zero_()
    assert expanded_weights([zero], 2).equal(torch.zeros(3, 2, 1, 1, dtype=torch.float64))  # nothing passes: no box
    g = torch.Generator().manual_seed(9)
    m = torch.rand(10, 3, generator=g, dtype=torch.float64) @ torch.rand(3, 30, generator=g, dtype=torch.float64)
    a, b = nmf(m * 1e-3, 3, iters=2000)  # small entries converge as fast: the step is not floored at a large value
    assert float((m * 1e-3 - a @ b).norm() / (m * 1e-3).norm()) < 1e-3
    assert one_sided_nmf(torch.randn(6, 8, 3, 3, generator=g)).relative_error > 0.1  # rank 3 cannot hold noise
    assert one_sided_nmf(torch.zeros(2, 4, 1, 1)).relative_error == 0.0
    white = glyphs(torch.zeros(1, 3, 1, 1))
    assert white.flatten().tolist() == [255, 255, 255]  # no loading at all: white, not NaN
    full = glyphs(torch.ones(1, 3, 1, 1))  # all three factors at full: the ink saturates at black, never wraps
    assert full.flatten().tolist() == [0, 0, 0]
    assert len(top_outputs(torch.ones(5, 2, 1, 1), 0, k=2)) == 2
    with pytest.raises(ValueError, match="wired_at needs one top-k set per step"):
        wired_at([], [])
    with pytest.raises(ValueError, match="a BatchNorm without running statistics"):
        fold_batchnorm(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1, track_running_stats=False))


def test_nmf_is_seeded_and_its_error_does_not_depend_on_the_weights_scale():
    g = torch.Generator().manual_seed(10)
    m = torch.rand(8, 20, generator=g, dtype=torch.float64)
    a1, b1 = nmf(m, 3, iters=50)
    a2, b2 = nmf(m, 3, iters=50)
    assert a1.equal(a2) and b1.equal(b2)  # the same seed, the same factors: reproducible glyphs
    w = torch.randn(4, 6, 3, 3, generator=g)
    big, small = one_sided_nmf(w).relative_error, one_sided_nmf(w * 1e-3).relative_error
    assert big > 0.05 and small == pytest.approx(big, rel=1e-6)  # a unit-free ratio, also below norm 1

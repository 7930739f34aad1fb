"""Linear probes and class selectivity: how much class information a layer's activations hold, as pure
functions (features and labels in, numbers out; no model, no files).

``linear_probe`` fits a multinomial logistic regression on standardized features (Alain & Bengio 2016);
``class_selectivity`` is the per-channel index of Morcos et al. (2018). Definitions, biases and the tests
that pin them: docs/metrics.md ("Linear probes and class selectivity").
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

L2 = 1e-3  # penalty on the probe's weights (not its bias), per feature and class, on standardized features
STEPS = 100  # at most this many L-BFGS iterations of the full-batch fit
TOLERANCE = 1e-4  # ... stopping earlier once no gradient entry exceeds this (accuracy moves < 0.005 beyond it)


def pooled(acts: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """Activation maps [N, C, H, W] averaged over a ``grid`` x ``grid`` partition of the map (1 = global
    average) and flattened: [N, C * grid * grid] float64. Averaged in float32 (2e-7 relative, the rounding
    float32 maps already carry; converting a ResNet-50's maps to float64 first took 10x as long per map),
    or in the maps' own precision where that is wider, then widened."""
    if acts.dim() != 4:
        raise ValueError(f"pooled needs activation maps [N, C, H, W], got shape {list(acts.shape)}")
    wide = acts if acts.dtype == torch.float64 else acts.float()  # half-precision maps are not averaged as such
    return F.adaptive_avg_pool2d(wide, grid).flatten(1).double()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    classes: int,
    l2: float = L2,
    steps: int = STEPS,
) -> dict[str, float]:
    """Fit softmax(W z + b) on the train features, z standardized with the train split's mean and standard
    deviation (a constant feature is left at 0), minimizing mean cross-entropy + ``l2`` * ||W||^2 from W = 0,
    b = 0 with full-batch L-BFGS in float64, for ``steps`` iterations or until no gradient entry exceeds
    ``TOLERANCE``; no randomness, so the same inputs give
    the same numbers. Returns the held-out ``accuracy`` and ``cross_entropy`` (nats) and the
    ``chance_accuracy`` of always guessing the train split's most frequent class."""
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or not len(train_x) or not len(test_x):
        raise ValueError("linear_probe needs features and labels of the same, non-zero length for both splits")
    mean = train_x.double().mean(0)
    std = train_x.double().std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z_train, z_test = (train_x.double() - mean) / std, (test_x.double() - mean) / std
    w = torch.zeros(z_train.shape[1], classes, dtype=torch.float64)
    b = torch.zeros(classes, dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=TOLERANCE)
    y = train_y.long()

    def closure() -> torch.Tensor:
        w.grad, b.grad, loss = softmax_loss_grad(z_train, y, w, b, l2)
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = z_test @ w + b
        return {
            "accuracy": float((logits.argmax(1) == test_y.long()).double().mean()),
            "cross_entropy": float(F.cross_entropy(logits, test_y.long())),
            "chance_accuracy": float((test_y.long() == torch.bincount(y, minlength=classes).argmax()).double().mean()),
        }


def softmax_loss_grad(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's objective, mean cross-entropy of softmax(z W + b) against ``y`` plus ``l2`` * ||W||^2, with its
    gradient written out: (dW, db, loss), dW = z^T (softmax - onehot) / N + 2 l2 W, db = the column sums of
    (softmax - onehot) / N. Autograd's numbers at about half the cost: the fits' matrices are small, and the
    engine's overhead per call was most of a fit's time."""
    with torch.no_grad():
        logits = z @ w + b
        rows = torch.arange(len(y))
        loss = (torch.logsumexp(logits, 1) - logits[rows, y]).mean() + l2 * (w * w).sum()
        d = torch.softmax(logits, 1)
        d[rows, y] -= 1.0
        d /= len(y)
        return z.T @ d + (2 * l2) * w, d.sum(0), loss


def class_selectivity(means: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per channel, (mu_max - mu_rest) / (mu_max + mu_rest) (Morcos et al. 2018): mu_c is the channel's mean
    activation over the images of class c, mu_max the largest, mu_rest the mean of the other classes' mu.
    ``means``: non-negative (post-ReLU) channel means [N, C]. 1 = responds to one class only, 0 = the same
    for every class; a channel that never responds scores 0. Classes without images are left out."""
    if means.dim() != 2 or len(means) != len(labels):
        raise ValueError("class_selectivity needs channel means [N, C] and one label per row")
    present = [c for c in range(classes) if bool((labels == c).any())]
    if len(present) < 2:
        raise ValueError("class_selectivity needs images of at least two classes")
    mu = torch.stack([means[labels == c].double().mean(0) for c in present])  # [K, C]
    top = mu.max(0).values
    rest = (mu.sum(0) - top) / (len(present) - 1)
    den = top + rest
    return torch.where(den > 0, (top - rest) / torch.where(den > 0, den, 1.0), 0.0)

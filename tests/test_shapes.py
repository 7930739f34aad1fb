"""The generated ``shapes`` data set: deterministic, balanced, and not solvable by colour."""

from __future__ import annotations

import pytest
import torch

from featviz.config import DataConfig
from featviz.data import SHAPE_CLASSES, channel_stats, load_data, make_shapes
from featviz.data.shapes import _MEAN_COVER, _paint


@pytest.fixture(scope="module")
def shapes_small():
    return make_shapes(n_train=200, n_val=50, size=16, seed=0)


def test_same_seed_gives_identical_bytes(shapes_small) -> None:
    again = make_shapes(n_train=200, n_val=50, size=16, seed=0)
    for a, b in [
        (shapes_small.train_x, again.train_x),
        (shapes_small.val_x, again.val_x),
        (shapes_small.train_y, again.train_y),
        (shapes_small.val_y, again.val_y),
    ]:
        assert a.numpy().tobytes() == b.numpy().tobytes()
    assert shapes_small.mean == again.mean and shapes_small.std == again.std


def test_different_seed_differs(shapes_small) -> None:
    other = make_shapes(n_train=200, n_val=50, size=16, seed=1)
    assert not torch.equal(shapes_small.train_x, other.train_x)
    assert not torch.equal(shapes_small.val_x, other.val_x)
    assert not torch.equal(shapes_small.train_y, other.train_y)


def test_validation_set_does_not_depend_on_n_train(shapes_small) -> None:
    bigger = make_shapes(n_train=300, n_val=50, size=16, seed=0)
    assert torch.equal(bigger.val_x, shapes_small.val_x)
    assert torch.equal(bigger.val_y, shapes_small.val_y)
    assert not torch.equal(shapes_small.train_x[:10], shapes_small.val_x[:10])


def test_shapes_and_dtypes(shapes_small) -> None:
    d = shapes_small
    assert d.name == "shapes"
    assert d.train_x.shape == (200, 3, 16, 16) and d.train_x.dtype == torch.uint8
    assert d.val_x.shape == (50, 3, 16, 16) and d.val_x.dtype == torch.uint8
    assert d.train_y.shape == (200,) and d.train_y.dtype == torch.int64
    assert d.val_y.shape == (50,) and d.val_y.dtype == torch.int64
    assert d.image_channels == 3 and d.size == 16
    # the images use the range (not all black / all white)
    assert int(d.train_x.min()) < 30 and int(d.train_x.max()) > 225


def test_ten_balanced_classes(shapes_small) -> None:
    d = shapes_small
    assert d.classes == SHAPE_CLASSES
    assert len(d.classes) == 10 and len(set(d.classes)) == 10
    assert torch.bincount(d.train_y, minlength=10).tolist() == [20] * 10
    assert torch.bincount(d.val_y, minlength=10).tolist() == [5] * 10
    # labels are shuffled, not in class order
    assert not torch.equal(d.train_y, torch.arange(200) % 10)


def test_size_64_works() -> None:
    d = make_shapes(n_train=20, n_val=10, size=64, seed=0)
    assert d.train_x.shape == (20, 3, 64, 64)
    assert d.val_x.shape == (10, 3, 64, 64)
    assert d.size == 64


def test_load_data_goes_through_make_shapes() -> None:
    d = load_data(DataConfig(name="shapes", n_train=30, n_val=10, size=16, seed=2))
    ref = make_shapes(n_train=30, n_val=10, size=16, seed=2)
    assert torch.equal(d.train_x, ref.train_x) and torch.equal(d.val_y, ref.val_y)
    assert load_data(DataConfig(n_train=10, n_val=10)).size == 32  # default side


def test_colour_alone_does_not_predict_the_class() -> None:
    d = make_shapes(n_train=4000, n_val=1000, size=16, seed=0)
    colour = lambda x: (x.float() / 255).mean(dim=(2, 3))  # noqa: E731  per-image mean RGB
    tr, va = colour(d.train_x), colour(d.val_x)
    global_mean = tr.mean(0)
    centroids = torch.stack([tr[d.train_y == c].mean(0) for c in range(10)])
    # every class has (nearly) the same mean colour ...
    assert (centroids - global_mean).abs().max() < 0.05
    # ... so a nearest-centroid classifier on colour is at chance level (0.1)
    acc = (torch.cdist(va, centroids).argmin(1) == d.val_y).float().mean().item()
    assert acc < 0.2


def test_stats_recorded(shapes_small) -> None:
    d = shapes_small
    mean, std = channel_stats(d.train_x)
    assert d.mean == pytest.approx(mean) and d.std == pytest.approx(std)
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert d.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    desc = d.describe()
    assert desc.classes == SHAPE_CLASSES
    assert (desc.image_channels, desc.size, desc.n_train, desc.n_val) == (3, 16, 200, 50)
    assert desc.mean == pytest.approx(d.mean, abs=1e-6) and desc.std == pytest.approx(d.std, abs=1e-6)


def test_paint_one_polarity_and_mean_independent_of_cover() -> None:
    fg, bg = torch.tensor([[0.9, 0.6, 0.7]] * 3), torch.tensor([[0.1, 0.3, 0.0]] * 3)
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, :, :2] = 1  # covers 1/4
    mask[1, :, :4] = 1  # 1/2
    mask[2, :, :6] = 1  # 3/4
    img = _paint(mask, fg, bg, torch.zeros(3, 1, 8, 8))
    inside, outside = img[:, :, 0, 0], img[:, :, 7, 7]
    assert torch.allclose(inside - outside, fg - bg)  # the foreground is lighter by fg - bg everywhere
    expected_mean = bg + _MEAN_COVER * (fg - bg)  # the same whatever the cover
    assert torch.allclose(img.mean((2, 3)), expected_mean, atol=1e-6)


def test_objects_are_lighter_than_their_background() -> None:
    d = make_shapes(n_train=600, n_val=10, size=32, seed=1)
    lum = (d.train_x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).flatten(1)
    objects = d.train_y < 6  # a minority of the pixels: brighter ones pull the mean above the median
    lighter = (lum.mean(1) > lum.median(1).values)[objects].float().mean().item()
    assert lighter > 0.9


def test_a_subset_of_a_split_has_the_whole_splits_bytes() -> None:
    """Indices across a chunk boundary, out of order and repeated: the same images and labels as the whole
    split at those indices, for both generated sets; an index outside the split is refused."""
    from featviz.data.base import CHUNK, generate_split
    from featviz.data.pairs import pairs_split
    from featviz.data.shapes import _render, shapes_split

    keep = torch.tensor([CHUNK + 51, 5, CHUNK, CHUNK - 1, 5, 0, 1000])
    for split in (shapes_split, pairs_split):
        x, y = split(CHUNK + 52, 8, 3, 0)
        sub_x, sub_y = split(CHUNK + 52, 8, 3, 0, keep)
        assert torch.equal(sub_x, x[keep]) and torch.equal(sub_y, y[keep])
        empty_x, empty_y = split(CHUNK + 52, 8, 3, 0, torch.tensor([], dtype=torch.long))
        assert empty_x.shape == (0, 3, 8, 8) and len(empty_y) == 0
    with pytest.raises(ValueError, match="outside 0..9"):
        generate_split(_render, 10, 10, 8, 0, torch.tensor([10]))


def test_the_generated_bytes_are_pinned() -> None:
    """The embedded sets' bytes for one small configuration each, so that a change to a generator (an extra
    random draw, a reordered one) shows here: every run's data would change with it."""
    import hashlib

    from featviz.data import make_pairs

    for make, want in ((make_shapes, "11cdaf6b8135f25d"), (make_pairs, "b3ebd47f15028065")):
        d = make(n_train=60, n_val=20, size=16, seed=4)
        parts = (d.train_x, d.val_x, d.train_y, d.val_y)
        assert hashlib.sha256(b"".join(t.numpy().tobytes() for t in parts)).hexdigest()[:16] == want

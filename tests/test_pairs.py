"""The default data set ``pairs``: two objects, the class is the textured one's shape and texture."""

from __future__ import annotations

import torch

from featviz.config import DataConfig
from featviz.data import GENERATED, PAIR_CLASSES, load_data, make_pairs, make_shapes
from featviz.data.pairs import PAIR_SHAPES, TEXTURES, _render


def test_pairs_is_the_default_and_shapes_is_kept_by_name() -> None:
    assert DataConfig().name == "pairs"
    assert GENERATED == {"pairs": make_pairs, "shapes": make_shapes}
    old = load_data(DataConfig(name="shapes", n_train=20, n_val=10, size=16))
    assert old.name == "shapes" and old.classes[0] == "disc" and len(old.classes) == 10


def test_classes_are_every_texture_times_every_shape() -> None:
    assert len(PAIR_CLASSES) == len(TEXTURES) * len(PAIR_SHAPES) == 10
    assert PAIR_CLASSES[0] == "stripes-disc" and PAIR_CLASSES[-1] == "dots-star"


def test_generation_is_a_pure_function_of_its_arguments() -> None:
    a = make_pairs(n_train=60, n_val=20, size=16, seed=4)
    b = make_pairs(n_train=60, n_val=20, size=16, seed=4)
    c = make_pairs(n_train=60, n_val=20, size=16, seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape == (60, 3, 16, 16)
    assert torch.equal(torch.bincount(a.train_y), torch.full((10,), 6))  # balanced
    longer = make_pairs(n_train=120, n_val=20, size=16, seed=4)
    assert torch.equal(longer.val_x, a.val_x)  # the validation set does not depend on n_train


def test_the_texture_is_the_only_difference_between_two_textures_of_one_shape(monkeypatch) -> None:
    """With the same random stream, "stripes-disc" and "dots-disc" draw the same two objects in the same
    places: without ink the images are identical, and with it they differ in a part of the image."""
    import featviz.data.pairs as pairs

    def both():
        return [_render(torch.tensor([k] * 8), 32, torch.Generator().manual_seed(1)).float() for k in (0, 5)]

    stripes, dots = both()
    share = ((stripes - dots).abs().amax(1) > 8).flatten(1).double().mean(1)
    assert bool((share > 0.01).all()) and bool((share < 0.35).all())
    monkeypatch.setattr(pairs, "INK", 0.0)
    stripes, dots = both()
    assert torch.equal(stripes, dots)

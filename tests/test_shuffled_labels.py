"""The shuffled-label control (``--labels shuffled``): the same images, training labels permuted once and
seeded, validation labels kept, recorded in run.json."""

from __future__ import annotations

import json

import torch

from featviz.config import DataConfig
from featviz.data import load_data


def test_shuffled_labels_permute_the_training_labels_only() -> None:
    base = DataConfig(n_train=400, n_val=50, seed=3)
    true = load_data(base)
    shuffled = load_data(DataConfig(n_train=400, n_val=50, seed=3, labels="shuffled"))
    assert torch.equal(shuffled.train_x, true.train_x) and torch.equal(shuffled.val_x, true.val_x)
    assert torch.equal(shuffled.val_y, true.val_y)  # validation keeps the task: a control scores chance there
    assert torch.equal(torch.bincount(shuffled.train_y), torch.bincount(true.train_y))  # a permutation
    agree = float((shuffled.train_y == true.train_y).double().mean())
    assert agree < 0.25  # 10 balanced classes: about 1 in 10 keep their label by chance
    again = load_data(DataConfig(n_train=400, n_val=50, seed=3, labels="shuffled"))
    assert torch.equal(again.train_y, shuffled.train_y)  # seeded: the same permutation every time


def test_cli_trains_a_shuffled_label_control_and_records_it(cli, tmp_path) -> None:
    code, _out, err = cli(
        ["train", "--labels", "shuffled", "--n-train", "64", "--n-val", "16", "--epochs", "1", "--widths", "4,8",
         "--kernels", "3,3", "--strides", "1,1", "--pools", "1,0", "--size", "16", "--snapshots", "epoch",
         "--name", "control", "--out", tmp_path]
    )  # fmt: skip
    assert code == 0, err
    info = json.loads((tmp_path / "control" / "run.json").read_text())
    assert info["configs"]["data"]["labels"] == "shuffled"
    code, _out, err = cli(["train", "--labels", "reversed", "--name", "bad", "--out", tmp_path])
    assert code != 0 and "unknown labels 'reversed'; choose one of true, shuffled" in err and "Traceback" not in err

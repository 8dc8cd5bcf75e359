"""Weights are checked for NaN and infinity where they are read: safetensors files and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distill.errors import InputError
from distill.finite import non_finite_tensor
from distill.checkpoint_file import load_checkpoint_file
from distill.io import load_weights


def test_the_first_non_finite_tensor_is_named() -> None:
    tensors = {"a": torch.ones(3), "ids": torch.tensor([1, 2]), "head": {"w": torch.tensor([1.0, float("nan")])}}
    assert non_finite_tensor(tensors) == "head.w"
    assert non_finite_tensor({"a": torch.ones(3), "e": torch.zeros(0)}) is None


def test_a_safetensors_file_with_infinite_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"tower.weight": torch.ones(2, 2), "tower.bias": torch.tensor([0.0, float("inf")])}, str(path))
    with pytest.raises(InputError, match=r"--student '.*model\.safetensors': tensor 'tower\.bias' holds NaN or "
                                         r"infinite values"):
        load_weights(path, "--student")


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"student.w": torch.tensor([float("nan")])}, "global_step": 3}, path)
    with pytest.raises(InputError, match=r"--ckpt_path '.*last\.ckpt': tensor 'student\.w' holds NaN or infinite "
                                         r"values .*use an earlier checkpoint"):
        load_checkpoint_file(path, "--ckpt_path")
    torch.save({"state_dict": {"student.w": torch.ones(1)}, "global_step": 3}, path)
    assert load_checkpoint_file(path, "--ckpt_path")["global_step"] == 3

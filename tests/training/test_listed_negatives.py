"""ListedNegatives is refused at setup, naming the setting, when its data module cannot feed it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distill.data import ShapesDataModule
from distill.training.candidates import ListedNegatives


def _module(datamodule: object) -> SimpleNamespace:
    return SimpleNamespace(teacher=None, needs_teacher_scores=True, _trainer=SimpleNamespace(datamodule=datamodule))


def test_data_without_listed_negative_ids_is_refused_at_setup() -> None:
    source = ListedNegatives(scores_from_data=True)
    with pytest.raises(ValueError, match=r"model\.init_args\.candidates: ListedNegatives reads .*b_neg_id.*which "
                                         r"ShapesDataModule does not give \(its binding_negatives are captions"):
        source.setup(_module(ShapesDataModule(binding_negatives=True)), "fit")
    with pytest.raises(ValueError, match=r"which SimpleNamespace does not give: use data that lists them"):
        source.setup(_module(SimpleNamespace(num_negatives=0)), "fit")


def test_data_that_lists_negatives_passes() -> None:
    source = ListedNegatives(scores_from_data=True)
    source.setup(_module(SimpleNamespace(num_negatives=2)), "fit")
    source.setup(_module(ShapesDataModule()), "test")  # evaluation reads no listed negatives
    source.setup(SimpleNamespace(teacher=None, needs_teacher_scores=True, _trainer=None), "fit")

"""A validation interval in batches longer than an epoch validates at the epoch's end instead of failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from tests.helpers import fit_args


def test_interval_longer_than_the_epoch_validates_each_epoch(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    main(fit_args("shapes-infonce.yaml", tmp_path, "--trainer.val_check_interval=2000", "--trainer.max_epochs=1"))
    err = capsys.readouterr().err
    assert ("distill: trainer.val_check_interval 2000 is longer than an epoch of this data (6 training batches): "
            "validating at the end of each epoch instead") in err
    assert "val rsum" in err  # validation ran at the epoch's end


def test_interval_within_the_epoch_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(fit_args("shapes-infonce.yaml", tmp_path, "--trainer.val_check_interval=2", "--trainer.max_steps=2"))
    err = capsys.readouterr().err
    assert "val_check_interval" not in err and "val rsum" in err

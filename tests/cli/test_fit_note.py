"""A fit that trains no batch says so instead of exiting 0 without a word."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from distill.cli.fit_note import BatchCounter, nothing_trained_note


def _trainer(**overrides: object) -> SimpleNamespace:
    values = dict(interrupted=False, fast_dev_run=False, current_epoch=2, global_step=12, max_epochs=2,
                  max_steps=-1, limit_train_batches=1.0)
    return SimpleNamespace(**{**values, **overrides})


def test_no_batch_trained_is_a_note_naming_the_limits() -> None:
    note = nothing_trained_note(_trainer(), BatchCounter(), "runs/x/last.ckpt")  # type: ignore[arg-type]
    assert note == ("distill: note: fit trained no batch: the run is at epoch 2, step 12, resumed from "
                    "'runs/x/last.ckpt', with trainer.max_epochs=2, max_steps=-1, limit_train_batches=1.0; raise "
                    "them to train further")


def test_a_run_that_trained_or_stopped_on_purpose_has_no_note() -> None:
    counter = BatchCounter()
    counter.on_train_batch_end(_trainer())  # type: ignore[arg-type]
    assert nothing_trained_note(_trainer(), counter, None) is None  # type: ignore[arg-type]
    assert nothing_trained_note(_trainer(interrupted=True), BatchCounter(), None) is None  # type: ignore[arg-type]
    assert nothing_trained_note(_trainer(fast_dev_run=1), BatchCounter(), None) is None  # type: ignore[arg-type]


@pytest.mark.slow
# The resumed run writes into the checkpoint folder of the run it resumes (on purpose).
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_resuming_a_finished_run_says_it_trained_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill.cli import main
    from tests.helpers import fit_args

    args = fit_args("shapes-infonce.yaml", tmp_path, "--trainer.max_steps=-1", "--trainer.max_epochs=1",
                    "--data.init_args.num_train=8")
    main(args)
    assert "trained no batch" not in capsys.readouterr().err
    main([*args, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert "distill: note: fit trained no batch: the run is at epoch 1" in err and "resumed from '" in err

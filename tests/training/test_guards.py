"""Training-time failures: a NaN/inf loss or gradient stops or is skipped; far-apart score scales warn."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from distill.training.callbacks import NonFiniteGuard, NonFiniteLossError
from distill.cli import main
from distill.losses import InfoNCE, LogitKL
from distill.training.module import DistillationModule
from tests.helpers import TINY_TEACHER, make_student
from tests.helpers import BrokenAt, ScaledTeacher
from tests.helpers import fit_args

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def trainer(*callbacks: L.Callback, steps: int = 4) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=list(callbacks))


class StepRecorder(L.Callback):
    """Copies the student's parameters before and after every training batch."""

    def __init__(self) -> None:
        self.changed: list[bool] = []
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._before = [p.detach().clone() for p in pl_module.student.parameters()]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        after = list(pl_module.student.parameters())
        self.changed.append(any(not torch.equal(b, a.detach()) for b, a in zip(self._before, after)))


def test_nan_loss_stops_with_step_batch_ids_and_last_checkpoint(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    broken = '{"class_path": "tests.helpers.BrokenAt", "init_args": {"calls": [8]}}'
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args("shapes-infonce.yaml", tmp_path, "--trainer.max_epochs=2",
                      f"--model.init_args.losses.boom={broken}"))
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, lines
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert lines[0].startswith("distill: error: NonFiniteGuard: the training loss is nan at epoch 1, global step 8 "
                               "(batch 2 of the epoch); batch a_id [")
    assert "], b_id [" in lines[0] and f"last good checkpoint: '{checkpoint}'" in lines[0]
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 6 and all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values())


@pytest.mark.parametrize("how", ["nan_loss", "nan_input", "inf_grad"])
def test_skip_mode_makes_the_bad_step_a_no_op(how: str, tiny_datamodule) -> None:
    module = DistillationModule(make_student(), losses={"infonce": BrokenAt(calls=[1], how=how)})
    recorder = StepRecorder()
    guard = NonFiniteGuard(mode="skip")
    run = trainer(guard, recorder)
    run.fit(module, datamodule=tiny_datamodule)
    assert recorder.changed == [True, False, True, True]
    assert guard.skipped == 1 and float(run.callback_metrics["train/nonfinite_skipped"]) == 1.0
    assert all(bool(torch.isfinite(p).all()) for p in module.student.parameters())


def test_stop_mode_checks_gradients_too(tiny_datamodule) -> None:
    module = DistillationModule(make_student(), losses={"infonce": BrokenAt(calls=[2], how="inf_grad")})
    with pytest.raises(NonFiniteLossError, match=r"NonFiniteGuard: the gradients are not finite \(total norm nan\) "
                                                 r"at epoch 0, global step 2 \(batch 2 of the epoch\); batch a_id"):
        trainer(NonFiniteGuard(mode="stop")).fit(module, datamodule=tiny_datamodule)


def test_skip_mode_gives_up_after_consecutive_skips(tiny_datamodule) -> None:
    module = DistillationModule(make_student(), losses={"infonce": BrokenAt(calls=list(range(10)))})
    with pytest.raises(NonFiniteLossError, match=r"NonFiniteGuard: 2 optimizer steps in a row were skipped"):
        trainer(NonFiniteGuard(mode="skip", max_consecutive_skips=2)).fit(module, datamodule=tiny_datamodule)


def test_teacher_and_student_score_scales_far_apart_warn_during_training(tiny_datamodule) -> None:
    teacher = ScaledTeacher(scale=1e4, **TINY_TEACHER)
    module = DistillationModule(make_student(), teacher=teacher, num_hard_negatives=4,
                                losses={"infonce": InfoNCE(), "kl": LogitKL()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(steps=2).fit(module, datamodule=tiny_datamodule)
    messages = [str(w.message) for w in caught if "scale mismatch" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("student/teacher scale mismatch: student logits span [")
    assert "but teacher scores span [" in messages[0] and "adjust the temperatures or the student scale" in messages[0]


def test_contrastive_collapse_guard_stops_on_a_window_mean_at_ln_batch() -> None:
    import math
    from types import SimpleNamespace

    from distill.training.callbacks import ContrastiveCollapseError, ContrastiveCollapseGuard

    guard = ContrastiveCollapseGuard(patience=4, tolerance=0.05)
    module = SimpleNamespace(losses={"infonce": InfoNCE(), "kl": LogitKL()}, student=make_student())
    run = SimpleNamespace(callback_metrics={}, global_step=7, world_size=2, callbacks=[])
    batch = {"a_id": torch.arange(32)}  # 32 per process, 2 processes: ln(64) = 4.159; the band starts at 3.951
    for value in (0.5, 4.3, 4.0, 3.9):  # window mean 3.175: a student that was learning
        run.callback_metrics["train/loss/infonce"] = torch.tensor(value)
        guard.on_train_batch_end(run, module, None, batch, 0)
    run.callback_metrics["train/loss/infonce"] = torch.tensor(3.9)  # window 4.3, 4.0, 3.9, 3.9: mean 4.025
    with pytest.raises(ContrastiveCollapseError, match=r"averaged 4\.025 over the last 4 steps, at ln\(64\) = 4\.159 "
                                                       r"\(global step 7, student temperature 0\.07\).*batching: random"):
        guard.on_train_batch_end(run, module, None, batch, 0)
    assert math.log(64) * 0.95 < 4.025
    no_infonce = SimpleNamespace(losses={"kl": LogitKL()})
    ContrastiveCollapseGuard(patience=1).on_train_batch_end(run, no_infonce, None, batch, 0)  # nothing to watch
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ContrastiveCollapseGuard(patience=0)
    with pytest.raises(ValueError, match=r"tolerance must be in \(0, 1\)"):
        ContrastiveCollapseGuard(tolerance=1.5)


def test_a_student_whose_scores_all_tie_is_stopped_by_the_recipes_guard(tmp_path: Path) -> None:
    """Every recipe composes the guard; a student with an enormous fixed temperature scores every pair alike, its
    InfoNCE sits at ln(B) and the run stops after the guard's patience, not at max_steps."""
    from distill.cli.recipe import DistillCLI
    from distill.training.callbacks import ContrastiveCollapseError, ContrastiveCollapseGuard

    args = fit_args("shapes-infonce.yaml", tmp_path, "--trainer.max_steps=40",
                    "--model.init_args.student.init_args.temperature=10000",
                    "--model.init_args.student.init_args.learn_temperature=false")[1:]
    cli = DistillCLI(args=args, run=False)
    guards = [c for c in cli.trainer.callbacks if isinstance(c, ContrastiveCollapseGuard)]
    assert len(guards) == 1
    guards[0].patience = 4
    with pytest.raises(ContrastiveCollapseError, match=r"over the last 4 steps, at ln\(8\) = 2\.079 \(global step 4"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 4

"""TeacherCheck: a teacher that re-ranks no better than the student stops fit before the first step."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from distill.data import ShapesDataModule
from distill.evaluation import RecallEvaluator
from distill.inputs import Inputs
from distill.teachers import ShapesCrossEncoder
from distill.training import DistillationModule
from distill.training.callbacks import TeacherCheck, TeacherCheckError
from tests.helpers import REPO_ROOT, make_student

GRID_TEACHER = REPO_ROOT / "artifacts" / "shapes-grid-teacher"
GRID_DATA = dict(layout="grid", num_train=16, num_val=24, num_test=8, num_objects=5, captions_per_image=2,
                 twin_prob=0.5, twins_per_scene=1, image_size=48, max_length=40, batch_size=8, eval_batch_size=16)


@pytest.fixture(autouse=True)
def _check_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_TEACHER_CHECK", "1")


class TowersStudent(nn.Module):
    """A trained dual encoder: the grid teacher's own contrastive (ITC) towers."""

    def __init__(self, teacher: ShapesCrossEncoder) -> None:
        super().__init__()
        self.towers = teacher
        self.logit_scale = nn.Parameter(torch.tensor(14.0))

    def encode_a(self, a: Inputs) -> Tensor:
        return self.towers.embed_a(a)

    def encode_b(self, b: Inputs) -> Tensor:
        return self.towers.embed_b(b)


def _fit(student: nn.Module, teacher: nn.Module, tmp_path: Path, check: TeacherCheck) -> L.Trainer:
    module = DistillationModule(student, teacher, evaluator=RecallEvaluator(two_stage_k=8))
    trainer = L.Trainer(max_steps=1, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[check], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=ShapesDataModule(**GRID_DATA))
    return trainer


def _random_like(folder: Path) -> ShapesCrossEncoder:
    trained = ShapesCrossEncoder.from_pretrained(folder)
    torch.manual_seed(1)
    return ShapesCrossEncoder(**{key: getattr(trained.config, key) for key in vars(trained.config)})


def test_random_teacher_is_refused_against_a_trained_student(tmp_path: Path) -> None:
    student = TowersStudent(ShapesCrossEncoder.from_pretrained(GRID_TEACHER))
    check = TeacherCheck(queries=16)
    with pytest.raises(TeacherCheckError) as raised:
        _fit(student, _random_like(GRID_TEACHER), tmp_path, check)
    message = str(raised.value)
    assert "\n" not in message
    assert "rsum" in message and "--teacher_check false" in message and "stronger teacher" in message
    assert check.result is not None and check.result.two_stage <= check.result.student
    assert check.result.queries == 16 and check.result.pairs > 0


def test_trained_teacher_passes_against_a_random_student(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    check = TeacherCheck(queries=16)
    with caplog.at_level(logging.INFO, logger="distill.teacher_check"):
        trainer = _fit(make_student(), ShapesCrossEncoder.from_pretrained(GRID_TEACHER), tmp_path, check)
    assert trainer.global_step == 1
    assert check.result is not None and check.result.two_stage > check.result.student
    # 16 images x their top 8 captions, and their 32 captions x their top 8 images
    assert check.result.pairs == 16 * 8 + 32 * 8
    assert any("teacher check passed" in record.getMessage() and "teacher pairs" in record.getMessage()
               for record in caplog.records)


def test_turned_off_by_the_switch_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = TowersStudent(ShapesCrossEncoder.from_pretrained(GRID_TEACHER))
    off = TeacherCheck(enabled=False)
    assert _fit(student, _random_like(GRID_TEACHER), tmp_path, off).global_step == 1 and off.result is None
    monkeypatch.setenv("DISTILL_TEACHER_CHECK", "0")
    check = TeacherCheck()
    assert _fit(student, _random_like(GRID_TEACHER), tmp_path, check).global_step == 1 and check.result is None


def test_no_teacher_is_skipped(tmp_path: Path) -> None:
    check = TeacherCheck()
    module = DistillationModule(make_student(), None)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[check])
    trainer.fit(module, datamodule=ShapesDataModule(**GRID_DATA))
    assert check.result is None and trainer.global_step == 1


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="queries"):
        TeacherCheck(queries=0)


@pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")  # the random teacher, trained anyway
def test_text_recipe_stops_when_a_random_cross_encoder_would_re_rank_minilm(
        tmp_path: Path, tiny_models, beir_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real all-MiniLM-L6-v2 ranks the gold passage of every dev query first; a randomly initialised
    cross-encoder can only tie or lower that, so fit stops before the first step (exit 1), naming both numbers."""
    from tests.helpers import error_line

    monkeypatch.chdir(tmp_path)
    recipe = str(REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml")
    args = ["fit", "--config", recipe, f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
            f"--data.init_args.data_dir={beir_dir}", f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
            "--data.init_args.passage_max_length=32", "--data.init_args.num_workers=0", "--trainer.logger=false",
            "--data.init_args.batch_size=5", "--trainer.max_steps=1"]
    line = error_line(capsys, args, status=1)
    assert line.startswith("distill: error: teacher check: on 3 validation queries the student alone scores "
                           "ndcg@10 100.00, re-ranked by the teacher (its top 10) ")
    assert "--teacher_check false" in line
    assert not list(tmp_path.rglob("*.ckpt"))
    from distill.cli import main

    main([*args, "--teacher_check", "false"])  # the switch trains anyway
    assert list(tmp_path.rglob("last*.ckpt"))


def test_modules_without_a_student_or_a_teacher_are_skipped(tiny_teacher) -> None:
    """The demo teacher's own pre-training (a scorer and an evaluator, no student) composes the same callbacks."""
    from types import SimpleNamespace

    from distill.teachers import TeacherScorer

    trainer = SimpleNamespace(fast_dev_run=False, ckpt_path=None, limit_val_batches=1.0)
    pretraining = SimpleNamespace(scorer=TeacherScorer(tiny_teacher), evaluator=RecallEvaluator())
    assert TeacherCheck().skip_reason(trainer, pretraining) == "no teacher"
    assert TeacherCheck().skip_reason(trainer, DistillationModule(make_student(), None)) == "no teacher"
    assert TeacherCheck().skip_reason(trainer, DistillationModule(make_student(), tiny_teacher)) is None
    assert TeacherCheck(enabled=False).skip_reason(trainer, DistillationModule(make_student(), tiny_teacher))


def test_the_check_leaves_the_random_state_as_it_found_it(tmp_path: Path) -> None:
    """Iterating the validation loaders draws seeds from the global generator; training must not see that."""
    import random

    import numpy as np

    states = []

    class Record(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            states.append((torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()))

    for check in (TeacherCheck(queries=8), TeacherCheck(enabled=False)):
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        module = DistillationModule(make_student(), ShapesCrossEncoder.from_pretrained(GRID_TEACHER),
                                    evaluator=RecallEvaluator(two_stage_k=4))
        L.Trainer(max_steps=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=[check, Record()],
                  default_root_dir=tmp_path).fit(module, datamodule=ShapesDataModule(**GRID_DATA))
    (torch_on, numpy_on, python_on), (torch_off, numpy_off, python_off) = states
    assert torch.equal(torch_on, torch_off) and (numpy_on == numpy_off).all() and python_on == python_off

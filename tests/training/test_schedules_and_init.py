"""WarmupCosineLR (hand-computed rates, run length from the trainer) and student_init (checkpoint, export)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import save_model

from distill.errors import InputError
from distill.losses import InfoNCE
from distill.training.module import DistillationModule
from distill.training.schedules import WarmupCosineLR, resolve_total_steps
from distill.students.weights import load_student_weights

from tests.helpers import make_student


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _rates(scheduler: WarmupCosineLR, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_warmup_cosine_rates_by_hand() -> None:
    # W = 2, T = 6, r = 0.1, base 2.0: warm-up 1/3, 2/3; then p = 0, 1/4, 2/4, 3/4, 1, 1 (clamped)
    scheduler = WarmupCosineLR(_optimizer(2.0), warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)]
    expected = [2.0 / 3, 4.0 / 3] + [2.0 * f for f in cosine]
    assert _rates(scheduler, 8) == pytest.approx(expected)
    assert expected[-1] == pytest.approx(0.2)  # ends at min_lr_ratio * base


def test_warmup_cosine_without_length_stays_flat_and_resolves() -> None:
    scheduler = WarmupCosineLR(_optimizer(), warmup_steps=0)
    assert _rates(scheduler, 3) == [1.0, 1.0, 1.0]
    resolve_total_steps(scheduler, 4)
    assert scheduler.total_steps == 4
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(_optimizer(), warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="length .* is unknown"):
        resolve_total_steps(WarmupCosineLR(_optimizer(), warmup_steps=3), float("inf"))
    short = WarmupCosineLR(_optimizer(), warmup_steps=10)  # e.g. fast_dev_run: 1 step
    with pytest.warns(UserWarning, match="warming up over 2 steps"):
        resolve_total_steps(short, 3)
    assert (short.warmup_steps, short.total_steps) == (2, 3)
    assert _rates(short, 3) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_module_gives_the_schedule_the_run_length(tiny_student, tiny_datamodule, tmp_path: Path) -> None:
    module = DistillationModule(
        student=tiny_student, losses={"infonce": InfoNCE()},
        lr_scheduler=lambda optimizer: WarmupCosineLR(optimizer, warmup_steps=1),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
    )
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=tiny_datamodule)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 4
    assert scheduler.last_epoch == 4
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # decayed to 0 at the end of the run


def test_student_init_from_checkpoint_and_export(tmp_path: Path) -> None:
    trained = make_student()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)
    state = {"state_dict": {f"student.{k}": v for k, v in trained.state_dict().items()}, "epoch": 0}
    torch.save(state, tmp_path / "run.ckpt")
    export = tmp_path / "export"
    export.mkdir()
    save_model(trained, str(export / "model.safetensors"))
    for source in (tmp_path / "run.ckpt", export):
        module = DistillationModule(student=make_student(), losses={"infonce": InfoNCE()}, student_init=str(source))
        for key, value in trained.state_dict().items():
            assert torch.equal(module.student.state_dict()[key], value), (source, key)


def test_student_init_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model.init_args.student_init '.*missing.ckpt' does not exist"):
        DistillationModule(student=make_student(), student_init=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"student.nope": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not fit the recipe's student"):
        load_student_weights(make_student(), tmp_path / "other.ckpt", option="student_init")
    torch.save({"state_dict": {"teacher.x": torch.zeros(1)}}, tmp_path / "teacher-only.ckpt")
    with pytest.raises(ValueError, match="holds no 'student.\\*' weights"):
        load_student_weights(make_student(), tmp_path / "teacher-only.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder without model.safetensors"):
        load_student_weights(make_student(), tmp_path / "empty")

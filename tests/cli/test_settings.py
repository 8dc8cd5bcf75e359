"""Settings Lightning or torch would reject are refused first, in one line naming the setting."""

from __future__ import annotations

import pytest
import torch

from distill.cli.settings import check_environment, check_optimization, check_trainer
from distill.errors import InputError, RecipeError
from distill.training.schedules import WarmupCosineLR


@pytest.mark.parametrize(("environ", "pattern"), [
    ({"WORLD_SIZE": "abc"}, r"environment variable WORLD_SIZE='abc' must be an integer >= 1"),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE='0' must be an integer >= 1"),
    ({"LOCAL_RANK": "x"}, r"environment variable LOCAL_RANK='x' must be an integer >= 0"),
    ({"RANK": "-1"}, r"RANK='-1' must be an integer >= 0"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 must be below WORLD_SIZE=2"),
    ({"SLURM_ARRAY_TASK_COUNT": "many"}, r"SLURM_ARRAY_TASK_COUNT='many'"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"}, r"SLURM_ARRAY_TASK_ID=5 lies outside the array"),
    ({"DISTILL_PROGRESS_SECONDS": "soon"}, r"DISTILL_PROGRESS_SECONDS='soon' must be a number of seconds >= 0"),
    ({"DISTILL_CACHE_SHARD_PAUSE": "-1"}, r"DISTILL_CACHE_SHARD_PAUSE='-1' must be a number of seconds >= 0"),
    ({"DISTILL_PROGRESS_SECONDS": "nan"}, r"DISTILL_PROGRESS_SECONDS='nan'"),
])
def test_a_bad_environment_variable_is_named(environ: dict[str, str], pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        check_environment(environ)


def test_launcher_environments_pass() -> None:
    check_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1",
                       "SLURM_ARRAY_TASK_ID": "", "PATH": "/bin", "DISTILL_PROGRESS_SECONDS": "0.5"})
    check_environment({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "4"})
    check_environment({})


@pytest.mark.parametrize(("trainer", "pattern"), [
    ({"max_steps": -5}, r"trainer\.max_steps must be an integer >= 0 or -1, got -5"),
    ({"max_epochs": -2}, r"trainer\.max_epochs must be an integer >= 0 or -1, got -2"),
    ({"accumulate_grad_batches": 0}, r"trainer\.accumulate_grad_batches must be an integer >= 1, got 0"),
    ({"max_epochs": 0}, r"trainer\.max_epochs=0 trains nothing"),
    ({"max_steps": 0, "max_epochs": 3}, r"trainer\.max_steps=0 trains nothing"),
    ({"accelerator": "gpu"}, r"trainer\.accelerator=gpu but this machine has no CUDA GPU"),
    ({"accelerator": "cuda", "devices": 3}, r"trainer\.accelerator=cuda but this machine has no CUDA GPU"),
    ({"val_check_interval": 0}, r"trainer\.val_check_interval must be > 0"),
    ({"val_check_interval": -0.5}, r"trainer\.val_check_interval must be > 0 .*got -0\.5"),
    ({"gradient_clip_val": -1.0}, r"trainer\.gradient_clip_val must be a finite number >= 0 .*got -1\.0"),
    ({"gradient_clip_val": float("nan")}, r"trainer\.gradient_clip_val must be a finite number >= 0"),
])
def test_trainer_values_lightning_rejects_are_named(trainer: dict[str, object], pattern: str) -> None:
    with pytest.raises(RecipeError, match=pattern):
        check_trainer(trainer, "fit", gpu_count=lambda: 0)


def test_trainer_values_that_run_pass() -> None:
    check_trainer({"max_steps": -1, "max_epochs": 2, "accumulate_grad_batches": 4, "accelerator": "auto"}, "fit",
                  gpu_count=lambda: 0)
    check_trainer({"max_epochs": 0}, "validate", gpu_count=lambda: 0)  # evaluating trains nothing on purpose
    check_trainer({"max_epochs": 0, "fast_dev_run": True}, "fit", gpu_count=lambda: 0)
    check_trainer({"accelerator": "gpu", "devices": 2}, "fit", gpu_count=lambda: 2)
    with pytest.raises(RecipeError, match=r"trainer\.devices=3 but this machine has 2 CUDA GPU"):
        check_trainer({"accelerator": "gpu", "devices": 3}, "fit", gpu_count=lambda: 2)


class _Model:
    def __init__(self, lr: float, warmup_steps: int = 0) -> None:
        self.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=lr)
        self.scheduler_factory = lambda optimizer: WarmupCosineLR(optimizer, warmup_steps=warmup_steps)


def test_optimizer_and_schedule_values_are_checked_before_training() -> None:
    with pytest.raises(RecipeError, match=r"model\.init_args\.optimizer: Invalid learning rate: -1"):
        check_optimization(_Model(lr=-1))
    with pytest.raises(RecipeError, match=r"model\.init_args\.optimizer: .*nan"):
        check_optimization(_Model(lr=float("nan")))
    with pytest.raises(RecipeError, match=r"model\.init_args\.lr_scheduler: warmup_steps must be >= 0, got -10"):
        check_optimization(_Model(lr=1e-3, warmup_steps=-10))
    check_optimization(_Model(lr=1e-3, warmup_steps=10))
    check_optimization(object())  # a module without factories is left alone


def test_a_gpu_run_config_is_read_on_a_machine_without_one() -> None:
    """export and model cards parse a run's saved config.yaml (trained on a GPU); no Trainer is built there."""
    from distill.cli.recipe import read_recipe
    from tests.helpers import DEMO

    spec = read_recipe(DEMO / "shapes-infonce.yaml", ["--trainer.accelerator=gpu", "--trainer.devices=8"])
    assert spec.student

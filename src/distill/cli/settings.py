"""Settings that Lightning or torch would reject with a traceback (or accept and do nothing with), checked
first with one line naming the setting.

* :func:`check_environment`: the process-layout environment variables distill and Lightning read
  (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``...) are integers in range; checked before Lightning is imported,
  which reads some of them at import;
* :func:`check_trainer`: ``trainer.*`` values (``max_steps``, ``max_epochs``, ``accumulate_grad_batches``,
  ``accelerator``...) before the Trainer is built;
* :func:`check_optimization`: the recipe's optimizer and learning-rate schedule are built once on a one-element
  parameter, so ``lr: -1`` or ``warmup_steps: -10`` fails here, naming the recipe key, rather than at the
  first training step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from distill.errors import InputError, RecipeError, one_line

__all__ = ["check_environment", "check_optimization", "check_trainer"]

# name -> smallest valid value; every one must be an integer when set.
ENVIRONMENT: dict[str, int] = {
    "WORLD_SIZE": 1, "RANK": 0, "LOCAL_RANK": 0, "NODE_RANK": 0, "LOCAL_WORLD_SIZE": 1, "GROUP_RANK": 0,
    "SLURM_PROCID": 0, "SLURM_LOCALID": 0, "SLURM_NODEID": 0, "SLURM_NTASKS": 1, "JSM_NAMESPACE_RANK": 0,
    "SLURM_ARRAY_TASK_ID": 0, "SLURM_ARRAY_TASK_MIN": 0, "SLURM_ARRAY_TASK_COUNT": 1,
}
_BELOW = {"RANK": "WORLD_SIZE", "LOCAL_RANK": "LOCAL_WORLD_SIZE"}
# distill's own settings in seconds (distill.progress, distill.cache.build): finite numbers >= 0 when set.
SECONDS = ("DISTILL_PROGRESS_SECONDS", "DISTILL_CACHE_SHARD_PAUSE")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a process-layout environment variable that is not an integer in range, naming it."""
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name, least in ENVIRONMENT.items():
        text = environ.get(name)
        if text is None or (text.strip() == "" and name.startswith("SLURM_")):
            continue
        try:
            values[name] = int(text.strip())
        except ValueError:
            values[name] = least - 1
        if values[name] < least:
            raise InputError(f"environment variable {name}={text!r} must be an integer >= {least}: unset it, or set "
                             "it as the launcher does (torchrun, srun)")
    for rank, size in _BELOW.items():
        if rank in values and size in values and values[rank] >= values[size]:
            raise InputError(f"environment variable {rank}={values[rank]} must be below {size}={values[size]}: "
                             "unset both, or set them as the launcher does (torchrun, srun)")
    task, first, count = (values.get(f"SLURM_ARRAY_TASK_{key}") for key in ("ID", "MIN", "COUNT"))
    if task is not None and count is not None and not (first or 0) <= task < (first or 0) + count:
        raise InputError(f"environment variable SLURM_ARRAY_TASK_ID={task} lies outside the array (SLURM_ARRAY_TASK_MIN"
                         f"={first or 0}, SLURM_ARRAY_TASK_COUNT={count}): set them as sbatch --array does")
    for name in SECONDS:
        text = environ.get(name)
        try:
            seconds = float(text) if text not in (None, "") else 0.0
        except ValueError:
            seconds = -1.0
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InputError(f"environment variable {name}={text!r} must be a number of seconds >= 0: unset it or fix "
                             "it")


def _integer(trainer: Mapping[str, Any], key: str, least: int, *, allow: tuple[int, ...] = (),
             hint: str = "") -> int | None:
    value = trainer.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (value < least and value not in allow):
        allowed = " or ".join([f"an integer >= {least}", *map(str, allow)])
        raise RecipeError(f"trainer.{key} must be {allowed}, got {value!r}{hint}")
    return value


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_trainer(trainer: Mapping[str, Any], subcommand: str | None,
                  gpu_count: Callable[[], int] = _gpu_count) -> None:
    """Refuse, in one line naming the ``trainer.*`` key, a value Lightning's Trainer would raise on (or, for
    ``fit``, one that makes the run train nothing)."""
    max_steps = _integer(trainer, "max_steps", 0, allow=(-1,), hint=" (-1: no limit)")
    max_epochs = _integer(trainer, "max_epochs", 0, allow=(-1,), hint=" (-1: no limit)")
    _integer(trainer, "min_steps", 0)
    _integer(trainer, "min_epochs", 0)
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate is not None and (isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1):
        raise RecipeError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    _integer(trainer, "check_val_every_n_epoch", 1)
    _integer(trainer, "log_every_n_steps", 0)
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise RecipeError(f"trainer.val_check_interval must be > 0 (a fraction of the epoch in (0, 1], or a number "
                          f"of batches >= 1), got {interval!r}")
    clip = trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and not (math.isfinite(clip) and clip >= 0):
        raise RecipeError(f"trainer.gradient_clip_val must be a finite number >= 0 (or null: no clipping), got {clip!r}"
                          " (a negative bound corrupts every gradient it clips)")
    if subcommand == "fit" and not trainer.get("fast_dev_run"):
        for key, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value == 0:
                raise RecipeError(f"trainer.{key}=0 trains nothing: give at least 1 (or -1 for no limit), or run "
                                  "`distill validate` to evaluate a checkpoint without training")
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda") and gpu_count() == 0:
        raise RecipeError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU that torch can use: "
                          "use --trainer.accelerator=cpu (or auto)")
    if isinstance(accelerator, str) and accelerator.lower() == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RecipeError("trainer.accelerator=mps but this machine has no Apple GPU that torch can use: use "
                              "--trainer.accelerator=cpu (or auto)")
    devices = trainer.get("devices")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda") and isinstance(devices, int) \
            and not isinstance(devices, bool) and devices > gpu_count():
        raise RecipeError(f"trainer.devices={devices} but this machine has {gpu_count()} CUDA GPU(s): give at most "
                          f"{gpu_count()}, or -1 for all")


def _finite_hyperparameters(optimizer: Any) -> None:
    for group in getattr(optimizer, "param_groups", []):
        for key in ("lr", "weight_decay", "eps", "momentum"):
            value = group.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value}")


def check_optimization(model: Any) -> None:
    """Build the model's optimizer and schedule once on a one-element parameter: a value the optimizer or the
    schedule rejects (``lr: -1``, ``warmup_steps: -10``) is one line naming ``model.init_args.optimizer`` or
    ``model.init_args.lr_scheduler``. Models without ``optimizer_factory`` are left alone."""
    import torch

    optimizer_factory = getattr(model, "optimizer_factory", None)
    if not callable(optimizer_factory):
        return
    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = optimizer_factory([parameter])
        _finite_hyperparameters(optimizer)
    except (ValueError, TypeError, KeyError) as error:
        raise RecipeError(f"model.init_args.optimizer: {one_line(error)}: fix the optimizer's init_args") from None
    scheduler_factory = getattr(model, "scheduler_factory", None)
    if callable(scheduler_factory):
        try:
            scheduler_factory(optimizer)
        except (ValueError, TypeError, KeyError) as error:
            raise RecipeError(f"model.init_args.lr_scheduler: {one_line(error)}: fix the schedule's init_args") \
                from None

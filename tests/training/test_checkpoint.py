"""``fit --ckpt_path last`` resumes from the newest ``last*.ckpt`` Lightning wrote, in any log version."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn

from distill.training.checkpoint import ResumableModelCheckpoint


def _checkpoint(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    os.utime(path, (mtime, mtime))
    return path


def _resolve_last(tmp_path: Path) -> str | None:
    trainer = L.Trainer(logger=CSVLogger(tmp_path / "logs", name="run"), callbacks=[ResumableModelCheckpoint()],
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    return trainer._checkpoint_connector._parse_ckpt_path(TrainerFn.FITTING, "last", model_provided=True,
                                                          model_connected=True)


@pytest.mark.filterwarnings("ignore:.*no last checkpoint available:UserWarning")
def test_last_finds_lightnings_versioned_last_checkpoints(tmp_path: Path) -> None:
    versions = tmp_path / "logs" / "run"
    _checkpoint(versions / "version_0" / "checkpoints" / "last.ckpt", 2, 1_000)
    # A second run into the same checkpoint folder: Lightning names its last checkpoint last-v1.ckpt.
    newest = _checkpoint(versions / "version_0" / "checkpoints" / "last-v1.ckpt", 5, 3_000)
    _checkpoint(versions / "version_1" / "checkpoints" / "last.ckpt", 3, 2_000)
    # Not last checkpoints, however new: another callback's file and a save that never finished.
    _checkpoint(versions / "version_1" / "checkpoints" / "last-best.ckpt", 9, 4_000)
    _checkpoint(versions / "version_1" / "checkpoints" / ".last.ckpt.x1y2.tmp", 9, 4_000)
    assert _resolve_last(tmp_path) == os.path.normpath(newest)
    newer = _checkpoint(versions / "version_2" / "checkpoints" / "last-v12.ckpt", 7, 5_000)
    assert _resolve_last(tmp_path) == os.path.normpath(newer)


@pytest.mark.filterwarnings("ignore:.*no last checkpoint available:UserWarning")
def test_last_with_no_checkpoint_starts_afresh(tmp_path: Path) -> None:
    assert _resolve_last(tmp_path) is None

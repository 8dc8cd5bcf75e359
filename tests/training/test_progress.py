"""ProgressLog: a line every N steps and one per validation, outside terminals; durations as the user reads them."""

from __future__ import annotations

import logging

import lightning as L

from distill.training import DistillationModule
from distill.training.callbacks.progress import ProgressLog, format_seconds
from tests.helpers import LogLines, make_student


def test_a_line_every_n_steps_and_one_per_validation(tiny_datamodule) -> None:
    """Steps 2 and 6 get a step line; step 4, where validation runs, gets one line with the metric instead."""
    handler, logger = LogLines(), logging.getLogger("distill.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    trainer = L.Trainer(accelerator="cpu", max_steps=6, max_epochs=-1, val_check_interval=4,
                        check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ProgressLog(every_n_steps=2, when="always")])
    try:
        trainer.fit(DistillationModule(make_student()), datamodule=tiny_datamodule)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    steps = [line.split(" | ")[0] for line in handler.lines]
    assert steps == ["epoch 1 step 2/6", "epoch 1 step 4/6", "epoch 1 step 6/6"], handler.lines
    assert "val rsum" in handler.lines[1] and not any("val" in handler.lines[i] for i in (0, 2))
    assert all("loss" in line and "(infonce" in line and "elapsed" in line for line in handler.lines)
    assert "left" in handler.lines[0] and "left" not in handler.lines[2]


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0, 42, 75, 3725)] == ["0s", "42s", "1m15s", "1h02m"]


def test_test_batches_get_lines_when_the_interval_passes(tiny_datamodule, monkeypatch) -> None:
    """With DISTILL_PROGRESS_SECONDS=0 every test batch gets a line, then one before the metrics."""
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "0")
    handler, logger = LogLines(), logging.getLogger("distill.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ProgressLog(when="always")])
    try:
        trainer.test(DistillationModule(make_student()), datamodule=tiny_datamodule)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    total = sum(trainer.num_test_batches)
    batches = [line for line in handler.lines if line.startswith("test batches: ")]
    assert len(batches) == total + 1 and batches[0].startswith(f"test batches: 1/{total} batches")
    assert batches[-1].endswith("computing the metrics")

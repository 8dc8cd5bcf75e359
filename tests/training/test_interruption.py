"""Interruption: SIGTERM / SIGINT save last.ckpt, resuming matches an uninterrupted run, saves are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from distill.training.callbacks import InterruptCheckpoint, NonFiniteGuard, RandomStateCheckpoint
from distill.training.checkpoint import AtomicCheckpointIO
from distill.cli.recipe import DistillCLI
from distill.data import ShapesDataModule
from distill.data.sampling import EpochShuffleSampler
from distill.training.module import DistillationModule
from tests.helpers import REPO_ROOT, make_student
from tests.helpers import BrokenAt, SendSignal
from tests.helpers import DEMO, TINY


# With the default logger, so that `--ckpt_path last` has to look into an earlier version_N folder.
# 16 images x 3 captions / batches of 8 = 6 steps per epoch, 18 in all.
RECIPE = ["fit", "--config", str(DEMO / "shapes-infonce.yaml"),
          *[a for a in TINY if not a.startswith("--trainer.logger")], "--trainer.max_epochs=3"]


def _wait_for(path: Path, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.communicate()[0].decode(errors="replace")
            pytest.fail(f"the training process never reached the pause point:\n{output[-3000:]}")
        time.sleep(0.05)


@pytest.mark.slow
# Resuming writes a new log version, so Lightning notes that the checkpoint folder moved (expected here).
@pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning")
def test_sigterm_mid_fit_saves_last_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # Interrupted run: a separate process that gets SIGTERM in the middle of epoch 1.
    interrupted = tmp_path / "interrupted"
    marker = tmp_path / "paused"
    pause = json.dumps({"class_path": "tests.helpers.PauseAfterStep",
                        "init_args": {"step": 8, "marker": str(marker)}})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "distill", *RECIPE, f"--trainer.default_root_dir={interrupted}",
         f"--trainer.callbacks+={pause}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    _wait_for(marker, process, seconds=240)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    checkpoint = interrupted / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert "stopped by SIGTERM at epoch 1, global step" in output and f"saved '{checkpoint}'" in output
    saved = torch.load(checkpoint, weights_only=True)
    assert 8 <= saved["global_step"] < 12  # inside epoch 1 (steps 7-12), not at an epoch boundary

    # Resume: a new log version; `--ckpt_path last` finds version_0/checkpoints/last.ckpt.
    resumed = DistillCLI(args=[*RECIPE, f"--trainer.default_root_dir={interrupted}", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 18
    reference = DistillCLI(args=[*RECIPE, f"--trainer.default_root_dir={tmp_path / 'uninterrupted'}"])
    assert reference.trainer.global_step == 18

    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    val_expected = {k: float(v) for k, v in reference.trainer.callback_metrics.items() if k.startswith("val")}
    val_got = {k: float(v) for k, v in resumed.trainer.callback_metrics.items() if k.startswith("val")}
    assert val_expected and val_expected == val_got


def test_sigint_saves_a_checkpoint_and_restores_the_handlers(tmp_path: Path, tiny_datamodule) -> None:
    before = signal.getsignal(signal.SIGINT)
    interrupt = InterruptCheckpoint()
    trainer = L.Trainer(accelerator="cpu", max_steps=10, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[interrupt, RandomStateCheckpoint(), SendSignal(2, signal.SIGINT)],
                        plugins=[AtomicCheckpointIO()])
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(DistillationModule(make_student()), datamodule=tiny_datamodule)
    assert exit_info.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and interrupt.saved_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert "RandomStateCheckpoint" in saved["callbacks"]
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 3}]


def test_train_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch() -> None:
    sampler = EpochShuffleSampler(40, seed=3)
    first = [sampler.order(epoch) for epoch in range(3)]
    assert first[0] != first[1] and EpochShuffleSampler(40, seed=3).order(2) == first[2]

    def batches(module: ShapesDataModule, epoch: int, state: dict[str, int] | None = None) -> list[list[int]]:
        loader = module.train_dataloader()
        if state is not None:
            loader.load_state_dict(state)
        loader.sampler.set_epoch(epoch)
        return [batch["b_id"].tolist() for batch in loader]

    settings = dict(num_train=8, num_val=2, num_test=2, image_size=16, batch_size=4)
    module = ShapesDataModule(**settings)
    module.setup("fit")
    full = batches(module, epoch=1)
    assert full != batches(module, epoch=0) and len(full) == 6
    restarted = ShapesDataModule(**settings)
    restarted.setup("fit")
    assert batches(restarted, epoch=1, state={"epoch": 1, "batches": 2}) == full[2:]
    assert batches(restarted, epoch=2, state={"epoch": 1, "batches": 2}) == batches(module, epoch=2)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weight": torch.ones(3)}, target)

    def crash_midway(obj: Any, handle: Any) -> None:
        handle.write(b"PK\x03\x04 half of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("distill.training.checkpoint.torch.save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "weight": torch.zeros(3)}, target)
    assert io.load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temporary file was removed


KILLED_WRITER = """
import sys, time
from pathlib import Path
import distill.training.checkpoint as checkpoint

def slow_save(obj, handle):
    handle.write(b"PK\\x03\\x04 first part of a large checkpoint")
    handle.flush()
    Path(sys.argv[2]).write_text("writing")
    time.sleep(120)

checkpoint.torch.save = slow_save
checkpoint.AtomicCheckpointIO().save_checkpoint({"global_step": 2}, sys.argv[1])
"""


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(marker, process, seconds=120)
    process.kill()  # SIGKILL: no handler, no cleanup
    process.communicate(timeout=60)
    assert torch.load(target, weights_only=True) == {"global_step": 1}
    assert sorted(p.name for p in target.parent.glob("*.ckpt")) == ["last.ckpt"]  # a leftover .tmp is not a checkpoint


class DistributedChecks(L.Callback):
    """Runs inside each DDP process: the train sampler is the resumable one, sharded, and a NaN step was skipped
    on every process."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = trainer.train_dataloader.sampler
        assert isinstance(sampler, EpochShuffleSampler) and sampler.num_replicas == 2
        assert len(trainer.train_dataloader) == 9  # 48 images x 3 captions / 2 processes / batches of 8

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
        assert guard.skipped == 1, guard.skipped


@pytest.mark.slow
def test_resumable_sampler_and_skip_under_ddp(tiny_datamodule) -> None:
    module = DistillationModule(make_student(), losses={"infonce": BrokenAt(calls=[0])})
    before = module.student.proj_a.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true", max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[NonFiniteGuard(mode="skip"), DistributedChecks()])
    trainer.fit(module, datamodule=tiny_datamodule)
    assert not torch.equal(module.student.proj_a.weight, before)  # the second step trained

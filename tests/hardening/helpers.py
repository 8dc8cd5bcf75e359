"""Small classes that recipes under test load by ``class_path`` (``tests.hardening.helpers.*``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from distill.losses import DistillationLoss, LossInputs
from distill.losses.infonce import symmetric_infonce_loss
from distill.teachers import ShapesCrossEncoder, Teacher
from distill.teachers.base import Inputs


class PauseAfterStep(L.Callback):
    """From global step ``step`` on, writes ``marker`` and sleeps ``pause`` seconds after every batch.

    A test process waits for the marker and sends a signal while the run is paused mid-epoch.
    """

    def __init__(self, step: int, marker: str, pause: float = 0.5) -> None:
        self.step = step
        self.marker = Path(marker)
        self.pause = pause

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            if not self.marker.exists():
                self.marker.write_text(str(trainer.global_step))
            time.sleep(self.pause)


class ScoreOnlyTeacher(Teacher):
    """A teacher that scores pairs but exposes no embeddings (like a plain cross-encoder).

    ``weights`` is accepted and ignored, so that it can replace a preset that sets it.
    """

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        return self.bias.expand(next(iter(a.values())).shape[0])


class ScaledTeacher(ShapesCrossEncoder):
    """The tiny shapes teacher with its scores multiplied by ``scale``."""

    def __init__(self, scale: float = 1e4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def fuse(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        return super().fuse(image_tokens, text_tokens, attention_mask) * self.scale


class BrokenAt(DistillationLoss):
    """InfoNCE that goes wrong at the listed calls (0-based), in one of three ways:

    ``nan_loss``: the loss value is NaN; ``nan_input``: the similarity fed to InfoNCE is NaN (its input
    check raises); ``inf_grad``: the value stays finite but the gradient is not.
    """

    requires_teacher: ClassVar[bool] = False
    requires_teacher_scores: ClassVar[bool] = False

    def __init__(self, calls: list[int], how: str = "nan_loss") -> None:
        super().__init__()
        self.calls = set(calls)
        self.how = how
        self.count = 0

    def forward(self, inputs: LossInputs) -> Tensor:
        call, self.count = self.count, self.count + 1
        similarity = inputs.similarity
        if call in self.calls and self.how == "nan_input":
            similarity = similarity * float("nan")
        loss = symmetric_infonce_loss(similarity, inputs.positive_mask, inputs.logit_scale)
        if call in self.calls and self.how == "nan_loss":
            return loss * float("nan")
        if call in self.calls and self.how == "inf_grad":
            return loss + torch.sqrt((similarity * 0.0).sum())  # value unchanged, d sqrt(x)/dx at 0 is inf
        return loss

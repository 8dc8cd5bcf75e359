"""Training: the :class:`DistillationModule`, its candidate sources, guards, checkpoints and schedules.

Recipes name classes by their full path (``distill.training.DistillationModule``,
``distill.training.candidates.InBatchNegatives``, ``distill.training.callbacks.NonFiniteGuard``...).
"""

from distill.training.module import DistillationModule
from distill.training.teacher_pretraining import CrossEncoderPretraining

__all__ = ["CrossEncoderPretraining", "DistillationModule"]

"""Training-time guards, as Lightning callbacks (``configs/trainer/default.yaml`` wires them into every recipe).

* :class:`CompatibilityCheck`: before any step, the data's token ids must fit the student's and the
  teacher's vocabularies (a student and teacher with different tokenizers); warns once when
  ``num_hard_negatives`` exceeds the candidates a batch has.
* :class:`NonFiniteGuard`: a NaN or inf loss (or gradient) either stops training with the step, the
  batch's ids and the last good checkpoint (``mode="stop"``), or makes that optimizer step a no-op
  and counts it (``mode="skip"``).
* :class:`SparseCollapseGuard`: a sparse student whose vectors on one side have had no non-zero weight
  for a few steps (every score tied, no gradient left) stops with what to do instead of training on.
* :class:`ContrastiveCollapseGuard`: a run whose InfoNCE loss has sat at ``ln(B)`` (every score tied) for
  ``patience`` steps stops with what to change.
* :class:`CacheRefresh`: every N steps the current student re-mines the teacher cache (ANCE); the teacher
  scores only the pairs no earlier generation holds.
* :class:`InterruptCheckpoint`: SIGTERM / SIGINT during ``fit`` save ``last.ckpt`` at the end of the
  current batch, then exit with status 128 + signal; ``fit --ckpt_path last`` resumes.
* :class:`RandomStateCheckpoint`: every checkpoint carries the random generators' states, so a resumed
  run draws the same dropout masks as an uninterrupted one.
* :class:`TeacherCheck`: at the start of ``fit``, the teacher must re-rank a sample of validation queries better
  than the student ranks them alone, or the run stops with both numbers.
* :class:`ProgressLog`: one line per epoch (loss terms, validation, elapsed and remaining time) when the
  output is not a terminal, where the progress bar would be noise.
"""

from distill.training.callbacks.cache_refresh import CacheRefresh
from distill.training.callbacks.collapse import ContrastiveCollapseError, ContrastiveCollapseGuard
from distill.training.callbacks.compatibility import CompatibilityCheck, IncompatibleModelsError, embedding_vocab_size
from distill.training.callbacks.interrupt import InterruptCheckpoint, TrainingInterrupted
from distill.training.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from distill.training.callbacks.progress import ProgressLog
from distill.training.callbacks.random_state import RandomStateCheckpoint
from distill.training.callbacks.sparse import SparseCollapseError, SparseCollapseGuard
from distill.training.callbacks.teacher_check import TeacherCheck, TeacherCheckError

__all__ = [
    "CacheRefresh",
    "CompatibilityCheck",
    "ContrastiveCollapseError",
    "ContrastiveCollapseGuard",
    "IncompatibleModelsError",
    "InterruptCheckpoint",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "ProgressLog",
    "RandomStateCheckpoint",
    "SparseCollapseError",
    "SparseCollapseGuard",
    "TeacherCheck",
    "TeacherCheckError",
    "TrainingInterrupted",
    "embedding_vocab_size",
]

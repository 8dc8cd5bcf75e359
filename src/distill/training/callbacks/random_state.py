"""RandomStateCheckpoint: every checkpoint carries the random generators' states."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RandomStateCheckpoint"]


class RandomStateCheckpoint(Callback):
    """Stores the torch (CPU and CUDA), NumPy and Python random states in every checkpoint.

    When ``fit`` resumes from a checkpoint that has them, they are restored as training starts, so
    dropout and any other random draw continue the stream of the run that wrote the checkpoint.
    Validation inside ``fit`` leaves the streams as it found them (a validation loader draws its seed from
    the global generator), so whether, and how often, validation runs never changes the trained weights,
    and a run resumed from a checkpoint written just before an epoch's validation ends where an
    uninterrupted run does. Together with the resumable train loader of the data modules, a resumed run
    ends with the same weights as an uninterrupted one (same device, same thread settings).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._before_validation: dict[str, Any] | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._before_validation = self.state_dict()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._before_validation = self._before_validation, None
        if state is not None:
            self._restore(state)

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
                      "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                      "cached_gaussian": float(numpy_state[4])},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state:
            self._restore(state)

    @staticmethod
    def _restore(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

"""The evaluator streams: it keeps embeddings and ids, never a split's raw inputs; the teacher sees at most
``teacher_max_pairs`` pairs per forward; disk-backed and half-precision buffers give the same rankings."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from distill.data import ShapesDataModule
from distill.evaluation import EvalContext, RecallEvaluator
from distill.evaluation.recall import retrieval_metrics
from distill.losses import InfoNCE, LogitKL
from distill.teachers import ShapesCrossEncoder, TeacherScorer
from distill.training import DistillationModule
from tests.helpers import TINY_TEACHER, make_student


class Alive:
    """Counts raw inputs alive at once: dataset items and collated batches register finalizers."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor, items: int) -> None:
        self.now += items
        self.peak = max(self.peak, self.now)
        weakref.finalize(tensor, self._release, items)

    def _release(self, items: int) -> None:
        self.now -= items


class CountingShapes(ShapesDataModule):
    """Shapes data whose test items and batches report when they are created and freed."""

    def __init__(self, alive: Alive, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alive = alive

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        dataset, alive = self.datasets["test"], self.alive
        original_getitem = type(dataset).__getitem__

        class Counted(type(dataset)):  # type: ignore[misc, valid-type]
            def __getitem__(self, index: int) -> Any:
                example = original_getitem(self, index)
                example["pixels"] = example["pixels"].clone()
                alive.track(example["pixels"], 1)
                return example

        dataset.__class__ = Counted

    def _loader(self, split: str, batch_size: int, train: bool = False) -> Any:
        loader = super()._loader(split, batch_size, train)
        if split == "test":
            collate, alive = loader.collate_fn, self.alive

            def counted(examples: list[Any]) -> Any:
                batch = collate(examples)
                alive.track(batch["a"]["pixel_values"], len(examples))
                return batch

            loader.collate_fn = counted
        return loader


def _peak_raw_inputs(num_test: int) -> tuple[int, int, list[int], DistillationModule]:
    """Test a module on ``num_test`` images: (peak raw items alive, items in the split, pairs per forward)."""
    alive = Alive()
    data = CountingShapes(alive, num_train=16, num_val=4, num_test=num_test, image_size=32, batch_size=8,
                          eval_batch_size=12)
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    sizes: list[int] = []
    original = teacher.score_pairs

    def counting(a, b, a_index, b_index):  # type: ignore[no-untyped-def]
        sizes.append(int(a_index.numel()))
        return original(a, b, a_index, b_index)

    teacher.score_pairs = counting  # type: ignore[method-assign]
    module = DistillationModule(make_student(), teacher, {"infonce": InfoNCE(), "kl": LogitKL()},
                                num_hard_negatives=3, teacher_max_pairs=7,
                                evaluator=RecallEvaluator(two_stage_k=5, evaluate_teacher=True))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=data, verbose=False)
    assert alive.now == 0
    return alive.peak, len(data.dataset("test")), sizes, module


def test_evaluation_never_holds_more_than_a_chunk_of_raw_inputs() -> None:
    """Raw inputs alive at once do not grow with the split: the loader's batches in flight (the items being
    collated, the batch, and the one Lightning prefetches) and one teacher chunk of 7 pairs."""
    small_peak, _, _, _ = _peak_raw_inputs(20)
    peak, items, sizes, module = _peak_raw_inputs(40)
    assert module.test_results["two_stage"]["teacher_pairs"] == 40 * 5 + items * 5
    assert sizes and max(sizes) <= 7  # every teacher forward of the two-stage ranking is bounded
    assert peak == small_peak <= 3 * 12 + 2 * 7 < items


def test_training_teacher_forwards_are_bounded_too(tiny_datamodule) -> None:
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    sizes: list[int] = []
    original = teacher.score_pairs
    teacher.score_pairs = lambda a, b, i, j: (sizes.append(int(i.numel())), original(a, b, i, j))[1]  # type: ignore
    module = DistillationModule(make_student(), teacher, {"infonce": InfoNCE(), "kl": LogitKL()},
                                num_hard_negatives=3, teacher_max_pairs=5)
    _, stats = module.build_loss_inputs(next(iter(tiny_datamodule.train_dataloader())))
    assert max(sizes) <= 5 and sum(sizes) == stats["teacher_pairs"] > 5


def _split_buffers(embeddings_dir: str | None, dtype: str) -> RecallEvaluator:
    generator = torch.Generator().manual_seed(0)
    evaluator = RecallEvaluator(two_stage_k=0, diagnostics=False, embedding_dtype=dtype,
                                embeddings_dir=embeddings_dir, query_chunk=5, key_chunk=7)
    images = torch.randn(10, 8, generator=generator)
    captions = images.repeat_interleave(3, 0) + 0.8 * torch.randn(30, 8, generator=generator)
    for start in range(0, 30, 9):  # batches of caption pairs, images repeated per caption
        rows = torch.arange(start, min(start + 9, 30))
        batch = {"a": {"x": images[rows // 3]}, "b": {"x": captions[rows]}, "a_id": rows // 3, "b_id": rows}
        evaluator.update("student", batch, lambda a: a["x"], lambda b: b["x"])
    return evaluator


def test_chunked_memmapped_and_half_precision_buffers_rank_as_the_full_matrix(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(10, 8, generator=generator)
    captions = images.repeat_interleave(3, 0) + 0.8 * torch.randn(30, 8, generator=generator)
    reference = retrieval_metrics(images @ captions.T, torch.arange(30) // 3)
    in_memory = _split_buffers(None, "float32").compute(EvalContext(stage="test"))["student"]
    on_disk = _split_buffers(str(tmp_path / "emb"), "float32").compute(EvalContext(stage="test"))["student"]
    for key, value in reference.items():
        assert in_memory[key] == pytest.approx(value) and on_disk[key] == pytest.approx(value), key
    assert not list((tmp_path / "emb").iterdir())  # the memory-mapped files are removed after the epoch
    half = _split_buffers(None, "float16").compute(EvalContext(stage="test"))["student"]
    assert half["rsum"] == pytest.approx(reference["rsum"], abs=15.0)


@pytest.mark.slow
def test_validation_under_ddp_equals_one_process() -> None:
    """Two processes each encode their shard of the split (21 captions: the sampler pads one with a repeat); the
    gathered, de-duplicated split gives the metrics of one process, two-stage re-ranking included."""
    import warnings

    from tests.helpers import TINY_DATA

    data = ShapesDataModule(**{**TINY_DATA, "num_val": 7})
    def run(devices: int) -> dict[str, float]:
        torch.manual_seed(0)
        module = DistillationModule(make_student(), ShapesCrossEncoder(**TINY_TEACHER), {"infonce": InfoNCE()},
                                    evaluator=RecallEvaluator(two_stage_k=3, two_stage_at=("val",), diagnostics=False))
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_model_summary=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {key: float(value) for key, value in trainer.validate(module, datamodule=data,
                                                                          verbose=False)[0].items()}

    one, two = run(1), run(2)
    assert one.keys() == two.keys() and "val/two_stage/rsum" in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-4), key

"""Training a late-interaction student: the step's score matrix, candidates (in-batch, queue, cached extras) and
their student scores come from the student's own score; 2 gloo processes equal one at twice the batch."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from distill.cache.format import CACHE_BATCH_KEY, CACHE_EXTRA_KEY
from distill.data import collate_pairs
from distill.evaluation import RecallEvaluator
from distill.losses import CPRD, InfoNCE, LogitKL
from distill.students import TokenEmbeddings
from distill.students.late_interaction import late_scores
from distill.teachers import ShapesCrossEncoder
from distill.training import DistillationModule
from distill.training.candidates import CachedCandidates, InBatchNegatives, MemoryQueue
from distill.training.mining import pair_positives, repeated_columns
from distill.training.step import select_candidates
from tests.helpers import (
    TINY_TEACHER,
    StepModule,
    batch_independent_late_student,
    local_rows,
    pair_batch,
    student_gradients,
    synthetic_cache_fields,
    tiny_shapes,
)

FULL_BATCH = 12  # 6 pairs per rank in the distributed test


def late_module(candidates: Any = None, similarity: str = "filip") -> DistillationModule:
    """Seeded, float64, no dropout: a batch-independent late student, a tiny live teacher, InfoNCE + CPRD + KL."""
    torch.manual_seed(0)
    losses = {"infonce": InfoNCE(), "cprd": CPRD(temperature=0.1, top_m=3), "kl": LogitKL(student_temperature=0.1)}
    module = DistillationModule(student=batch_independent_late_student(similarity),
                                teacher=ShapesCrossEncoder(**TINY_TEACHER), losses=losses, num_hard_negatives=3,
                                candidates=candidates if candidates is not None else InBatchNegatives(),
                                evaluator=RecallEvaluator(diagnostics=False))
    return module.double()


def with_extras(batch: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """``batch`` plus cached fields whose first a2b / b2a candidate of item i is an extra item (dataset row
    ``size + i``), brought as ``batch[CACHE_EXTRA_KEY]`` (one per anchor and direction)."""
    size = int(batch["a_id"].shape[0])
    dataset = datamodule.dataset("train")
    extra = collate_pairs([dataset[size + i] for i in range(size)], datamodule.pad_token_id)
    fields = synthetic_cache_fields(batch, k=4)
    fields["a2b_ids"][:, 0] = extra["b_id"]
    fields["b2a_ids"][:, 0] = extra["a_id"]
    out = dict(batch)
    out[CACHE_BATCH_KEY] = fields
    out[CACHE_EXTRA_KEY] = {"a": {"pixel_values": extra["a"]["pixel_values"].double()}, "a_id": extra["a_id"],
                            "b": extra["b"], "b_id": extra["b_id"]}
    return out


def check_candidate_scores(module: DistillationModule, batch: dict[str, Any]) -> dict[str, Any]:
    """The step's score matrix and every candidate's student score equal :func:`late_scores` of the encoded items;
    in-batch negatives are the top-K of that matrix. Returns the step's selection."""
    step = module.encode_step(batch)
    a, b = step.a.embeddings, step.b.embeddings
    assert isinstance(a, TokenEmbeddings) and isinstance(b, TokenEmbeddings)
    similarity = module.student.similarity

    def scores(x: TokenEmbeddings, y: TokenEmbeddings) -> torch.Tensor:
        return late_scores(x, y, similarity)

    assert torch.allclose(step.similarity, scores(a, b), rtol=0, atol=1e-10)
    selected = select_candidates(module.candidates, step, ["a2b", "b2a"])
    inputs, _ = module.build_loss_inputs(batch)
    assert torch.allclose(inputs.similarity, step.similarity, rtol=0, atol=1e-10)
    assert inputs.student_embeddings is None  # no pooled vector for an embedding loss to read
    for direction, candidates in selected.items():
        anchors, columns = (a, b) if direction == "a2b" else (b, a)
        if candidates.extra is not None:
            columns = TokenEmbeddings.cat([columns, candidates.extra.embeddings])
        full = scores(anchors, columns) if direction == "a2b" else scores(columns, anchors).T
        expected = full.gather(1, candidates.index)
        got = getattr(inputs, direction).student
        valid = candidates.valid
        assert torch.allclose(got[valid], expected[valid], rtol=0, atol=1e-10), direction
    return selected


def test_step_scores_and_hard_negatives_come_from_the_late_score() -> None:
    datamodule = tiny_shapes(num_train=2 * FULL_BATCH, batch_size=FULL_BATCH)
    batch = pair_batch(datamodule, FULL_BATCH)
    module = late_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        selected = check_candidate_scores(module, batch)
        step = module.encode_step(batch)
        mask = pair_positives(step.a.ids, step.a.pair_ids, step.b.pair_ids, step.b.ids)
        mask = mask | repeated_columns(step.b.ids).unsqueeze(0)
        expected = step.similarity.masked_fill(mask, float("-inf")).topk(3, dim=1).values
        negatives = selected["a2b"]
        chosen = step.similarity.gather(1, negatives.index[:, 1:]).masked_fill(~negatives.valid[:, 1:], float("-inf"))
        assert torch.allclose(chosen.sort(dim=1, descending=True).values, expected, rtol=0, atol=1e-12)
        loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.student.proj_a.weight.grad is not None


def test_colbert_scores_keep_the_image_as_query_in_both_directions() -> None:
    datamodule = tiny_shapes(num_train=2 * FULL_BATCH, batch_size=FULL_BATCH)
    module = late_module(similarity="colbert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_candidate_scores(module, pair_batch(datamodule, FULL_BATCH))


def test_cached_extras_and_queued_items_are_scored_by_the_student() -> None:
    datamodule = tiny_shapes(num_train=2 * FULL_BATCH, batch_size=FULL_BATCH)
    batch = with_extras(pair_batch(datamodule, FULL_BATCH), datamodule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selected = check_candidate_scores(late_module(CachedCandidates("unused")), batch)
        assert selected["a2b"].extra is not None and bool((selected["a2b"].index >= FULL_BATCH).any())
        module = late_module(MemoryQueue(size=2 * FULL_BATCH))
        module.training_step(batch, 0)  # fills the queue
        selected = check_candidate_scores(module, pair_batch(datamodule, FULL_BATCH))
        assert selected["a2b"].extra is not None


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return int(handle.getsockname()[1])


def _full_batch() -> dict[str, Any]:
    datamodule = tiny_shapes(num_train=2 * FULL_BATCH, batch_size=FULL_BATCH)
    return with_extras(pair_batch(datamodule, FULL_BATCH), datamodule)


def _local(full: dict[str, Any], rows: slice, extra_padding: int) -> dict[str, Any]:
    """Rows of the full batch; captions (and extra captions) re-trimmed to the rows' longest, then right-padded
    by ``extra_padding`` more tokens, so that the processes hold different token lengths."""
    local = local_rows(full, rows)
    extra = local[CACHE_EXTRA_KEY]
    length = int(extra["b"]["attention_mask"].sum(1).max())
    extra["b"] = {key: value[:, :length] for key, value in extra["b"].items()}
    local["b"] = {key: torch.nn.functional.pad(value, (0, extra_padding)) for key, value in local["b"].items()}
    return local


def late_ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = _full_batch()
        size = FULL_BATCH // world
        local = _local(full, slice(rank * size, (rank + 1) * size), extra_padding=3 * rank)
        results: dict[str, Any] = {"lengths": int(local["b"]["input_ids"].shape[1])}
        for mode in ("live", "cached"):
            module = late_module(CachedCandidates("unused") if mode == "cached" else None)
            wrapped = DistributedDataParallel(StepModule(module), find_unused_parameters=True)
            loss = wrapped(local)
            loss.backward()
            results[mode] = {"loss": loss.detach(), "grads": student_gradients(module)}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, results["lengths"])
        results["lengths"] = gathered
        if rank == 0:
            torch.save(results, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_at_twice_the_batch(tmp_path: Path) -> None:
    mp.start_processes(late_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    distributed_results = torch.load(tmp_path / "rank0.pt", weights_only=True)
    lengths = distributed_results["lengths"]
    assert lengths[0] != lengths[1], lengths  # the gather pads token embeddings of different lengths
    full = _full_batch()
    for mode in ("live", "cached"):
        module = late_module(CachedCandidates("unused") if mode == "cached" else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = module.training_step(full, 0)
        loss.backward()
        reference = student_gradients(module)
        result = distributed_results[mode]
        assert torch.allclose(result["loss"], loss.detach(), rtol=0, atol=1e-8), (mode, result["loss"], loss)
        assert set(result["grads"]) == set(reference)
        for name, grad in reference.items():
            assert torch.allclose(result["grads"][name], grad, rtol=0, atol=1e-8), (mode, name)


GRID_TINY = ["--data.init_args.num_train=48", "--data.init_args.num_val=8", "--data.init_args.num_test=8",
             "--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=16", "--data.init_args.image_size=32"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:student/teacher scale mismatch")  # a random tiny teacher scores alike
def test_late_grid_recipes_fit_live_and_from_a_pooled_students_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """grid-late-cprd-kl.yaml: one fast_dev_run step (validation ranks the token embeddings); then the cache of
    grid-cached-cprd-kl.yaml (mined by the pooled student) feeds grid-late-cached-cprd-kl.yaml without a teacher
    call; mining with the late student is one error line."""
    from distill.cli.cache_teacher import main as cache_main
    from tests.helpers import DEMO, error_line, fit_and_check

    monkeypatch.chdir(tmp_path)
    teacher = ShapesCrossEncoder(towers="student", image_size=32, max_length=40, embed_dim=64, width=32, heads=2,
                                 text_layers=1, image_channels=(8, 16, 16, 32), text_intermediate=64,
                                 fusion_layers=1, fusion_stage=3, fusion_raw=True, mlp_ratio=2)
    weights = f"--model.init_args.teacher.init_args.weights={teacher.save_pretrained(tmp_path / 'teacher')}"
    run = ["--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    cli = fit_and_check(["--config", str(DEMO / "grid-late-cprd-kl.yaml"), *GRID_TINY, weights, *run])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/teacher_pairs"]) > 0 and 0.0 <= float(metrics["val/rsum"]) <= 600.0

    data = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in GRID_TINY]
    cache = f"--model.init_args.candidates.init_args.path={tmp_path / 'cache'}"
    cache_main(["--config", str(DEMO / "grid-cached-cprd-kl.yaml"), *data, weights, cache, "--k", "8", "--no-progress"])
    cli = fit_and_check(["--config", str(DEMO / "grid-late-cached-cprd-kl.yaml"), *data, weights, cache, *run])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/teacher_pairs_total"]) == 0.0 and float(metrics["train/cached_negatives_a2b"]) >= 1.0

    line = error_line(capsys, ["cache-teacher", "--config", str(DEMO / "grid-late-cached-cprd-kl.yaml"), *data, weights,
                               f"--model.init_args.candidates.init_args.path={tmp_path / 'late-cache'}", "--k", "8",
                               "--no-progress"])
    assert "late-interaction student's token embeddings" in line and "pooled student preset" in line

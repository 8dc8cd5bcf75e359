"""Teacher-score cache: resumable byte-identical builds, refusal of mismatching caches, and training from the
cache computing the same losses as training with the live teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from distill.cache import CacheMismatchError, CachedCandidatesDataModule
from distill.cache.build import PAUSE_ENV, PLAN_NAME, BuildSettings, build_teacher_cache
from distill.cli import main as cli_main
from distill.cli.cache_teacher import main as cache_main
from distill.data import ShapesDataModule
from distill.errors import InputError
from distill.evaluation import RecallEvaluator
from distill.losses import CPRD, DCD, InfoNCE, LogitKL, MarginMSE
from distill.teachers import ShapesCrossEncoder
from distill.training import DistillationModule
from distill.training.candidates import CachedCandidates, resolve_cached_candidates
from tests.helpers import (DATA, REPO_ROOT, TINY_TEACHER, FirstCaptionShapes, all_losses, fit_and_check,
                           kill_after_first_shard, make_student, tiny_shapes)

RECIPE = REPO_ROOT / "configs" / "demo" / "shapes-cprd.yaml"
CACHED_RECIPE = REPO_ROOT / "configs" / "demo" / "cached-shapes-cprd.yaml"
NUM_TRAIN = 16  # images; 48 caption items
DATA_ARGS = [f"--data.init_args.num_train={NUM_TRAIN}", "--data.init_args.num_val=8", "--data.init_args.num_test=8",
             "--data.init_args.image_size=32", "--data.init_args.batch_size=12"]
STUDENT_ARGS = [
    "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size=32",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads=2",
    "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size=64",
]
BUILD_ARGS = ["--k", "4", "--shard-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return ShapesCrossEncoder(**TINY_TEACHER).save_pretrained(tmp_path_factory.mktemp("teacher"))


def _cache_args(out: Path, teacher_dir: Path) -> list[str]:
    return ["--config", str(RECIPE), "--out", str(out), *BUILD_ARGS, *DATA_ARGS, *STUDENT_ARGS,
            f"--model.init_args.teacher.init_args.weights={teacher_dir}"]


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("cache") / "full"
    torch.set_num_threads(1)
    cache_main(_cache_args(out, teacher_dir))
    return out


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_killed_build_resumes_byte_identical(tmp_path: Path, teacher_dir: Path, built_cache: Path) -> None:
    out = tmp_path / "resumed"
    env = {**os.environ, PAUSE_ENV: "60", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-m", "distill", "cache-teacher", *_cache_args(out, teacher_dir)],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "pairs-00000.safetensors"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert first.exists(), stderr.decode()[-2000:]
    assert not (out / "manifest.json").exists() and (out / PLAN_NAME).exists()
    assert len(list(out.glob("*.safetensors"))) < len(list(built_cache.glob("*.safetensors")))

    cache_main(_cache_args(out, teacher_dir))  # same arguments: resume
    assert _folder_bytes(out) == _folder_bytes(built_cache)
    cache_main(_cache_args(out, teacher_dir))  # complete: nothing to do, nothing changes
    assert _folder_bytes(out) == _folder_bytes(built_cache)


def test_build_refuses_a_folder_built_with_other_arguments(teacher_dir: Path, built_cache: Path) -> None:
    args = _cache_args(built_cache, teacher_dir)
    args[args.index("--k") + 1] = "3"
    with pytest.raises(InputError, match=r"k is 4 there and 3 now; delete the folder or choose another --out"):
        cache_main(args)


def test_mismatching_cache_is_refused_naming_the_field(built_cache: Path, teacher_dir: Path) -> None:
    other_data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN - 2, batch_size=12, **DATA),
                                            cache_dir=str(built_cache))
    with pytest.raises(CacheMismatchError, match=r"data\.init_args\.num_train is 16 in the cache, 14 in the recipe"):
        other_data.setup("fit")

    torch.manual_seed(1)
    other_teacher = DistillationModule(make_student(), ShapesCrossEncoder(**TINY_TEACHER), {"cprd": CPRD()},
                                       num_hard_negatives=4, candidates=CachedCandidates(str(built_cache)))
    with pytest.raises(CacheMismatchError, match=r"teacher\.weights_sha256 is .* in the cache, .* in the recipe"):
        other_teacher.setup("fit")

    same_teacher = ShapesCrossEncoder(weights=str(teacher_dir))
    too_many = DistillationModule(make_student(), same_teacher, {"cprd": CPRD()}, num_hard_negatives=8,
                                  candidates=CachedCandidates(str(built_cache)))
    with pytest.raises(CacheMismatchError, match=r"k is 4 in the cache, but model.init_args.num_hard_negatives is 8"):
        too_many.setup("fit")
    DistillationModule(make_student(), None, {"cprd": CPRD()}, num_hard_negatives=4,
                       candidates=CachedCandidates(str(built_cache))).setup("fit")  # no teacher: nothing to compare

    with pytest.raises(InputError, match="has no manifest.json"):
        CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, **DATA), cache_dir=str(built_cache / "x")
                                   ).setup("fit")


@pytest.mark.parametrize(
    ("data_class", "directions"),
    [(FirstCaptionShapes, "both"),  # one item per image: both directions see the same candidates
     (ShapesDataModule, "a2b")],  # three captions per image: live b2a mining repeats images, the cache does not
)
def test_training_from_cache_matches_live_teacher(tmp_path: Path, data_class: type[ShapesDataModule],
                                                  directions: str) -> None:
    probe = tiny_shapes(num_train=NUM_TRAIN, batch_size=1, cls=data_class)
    size = len(probe.train_dataloader().dataset)
    datamodule = tiny_shapes(num_train=NUM_TRAIN, batch_size=size, cls=data_class)  # one batch = the whole split
    student, teacher = make_student(), ShapesCrossEncoder(**TINY_TEACHER)
    k = 4
    build_teacher_cache(student, teacher, datamodule, tmp_path / "cache", BuildSettings(k=k, shard_size=8),
                        progress=False)

    def losses() -> dict[str, Any]:
        built = all_losses()
        for loss in built.values():
            if hasattr(loss, "directions"):
                loss.directions = directions
        return built

    live = DistillationModule(student, teacher, losses(), num_hard_negatives=k).eval()
    cached = DistillationModule(student, None, losses(), num_hard_negatives=k,
                                candidates=CachedCandidates(str(tmp_path / "cache"))).eval()
    wrapper = CachedCandidatesDataModule(datamodule, cache_dir=str(tmp_path / "cache"))
    wrapper.setup("fit")
    batch = next(iter(wrapper.train_dataloader()))
    assert batch["a_id"].numel() == size
    calls: list[int] = []
    teacher.score_pairs = lambda *args: calls.append(1)  # type: ignore[method-assign, assignment, return-value]
    with torch.no_grad():
        cached_inputs, stats = cached.build_loss_inputs(batch)
        del teacher.score_pairs
        live_inputs, _ = live.build_loss_inputs({key: value for key, value in batch.items() if key != "teacher_cache"})
    assert not calls and stats["teacher_pairs"] == 0 and stats["cached_negatives_a2b"] > 0
    for direction in ("a2b", "b2a") if directions == "both" else (directions,):
        ours, theirs = getattr(cached_inputs, direction), getattr(live_inputs, direction)
        assert ours.valid.all() and theirs.valid.all()
        for row in range(size):  # same candidate columns (order may differ on ties) and teacher scores
            assert sorted(ours.student[row].tolist()) == pytest.approx(sorted(theirs.student[row].tolist()), abs=1e-6)
            assert sorted(ours.teacher[row].tolist()) == pytest.approx(sorted(theirs.teacher[row].tolist()), abs=1e-5)
    for name, loss in cached.losses.items():
        ours, theirs = loss(cached_inputs), live.losses[name](live_inputs)
        assert torch.allclose(ours, theirs, atol=1e-5), (name, float(ours), float(theirs))


def test_resolve_cached_candidates_keeps_present_ids_in_cached_order() -> None:
    ids = torch.tensor([[30, 99, 20, -1], [10, 30, 20, 10]])
    scores = torch.tensor([[3.0, 9.0, 2.0, 0.0], [1.0, 3.0, 2.0, 1.0]])
    columns = torch.tensor([10, 20, 30, 20])
    candidates, teacher = resolve_cached_candidates(ids, scores, torch.tensor([5.0, 6.0]), columns, k=3)
    assert candidates.index.tolist() == [[0, 2, 1, 0], [1, 0, 2, 1]]
    assert candidates.valid.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert teacher.tolist() == [[5.0, 3.0, 2.0, 0.0], [6.0, 1.0, 3.0, 2.0]]


def test_random_cached_batches_are_the_data_modules_batches_with_their_candidates_as_extras(
        built_cache: Path) -> None:
    inner = ShapesDataModule(num_train=NUM_TRAIN, batch_size=12, **DATA)
    datamodule = CachedCandidatesDataModule(inner, cache_dir=str(built_cache), candidates_per_anchor=3,
                                            candidate_order="student")
    datamodule.setup("fit")
    plain = list(inner.train_dataloader())
    cached = list(datamodule.train_dataloader())
    assert len(cached) == len(plain) == 48 // 12
    tables = datamodule.tables
    for ours, theirs in zip(cached, plain):  # same random anchors in the same order: in-batch negatives stay random
        assert torch.equal(ours["b_id"], theirs["b_id"]) and torch.equal(ours["a"]["pixel_values"],
                                                                          theirs["a"]["pixel_values"])
        items = torch.tensor([tables.item_of_b[b_id] for b_id in ours["b_id"].tolist()])
        extra = ours["teacher_cache_extra"]
        assert extra["b_id"].shape == extra["a_id"].shape == (12 * 3,)
        assert extra["b_id"].tolist() == tables.a2b_ids[items, :3].reshape(-1).tolist()  # first 3 cached, in order
        assert extra["a_id"].tolist() == tables.b2a_ids[items, :3].reshape(-1).tolist()
        collate, dataset = inner.train_dataloader().collate_fn, inner.dataset("train")
        b_holders = [tables.item_of_b[b_id] for b_id in extra["b_id"].tolist() if b_id >= 0]
        a_holders = [tables.items_of_a[a_id][0] for a_id in extra["a_id"].tolist() if a_id >= 0]
        assert b_holders and a_holders
        expected_b = collate([dataset[item] for item in b_holders])["b"]["input_ids"]
        expected_a = collate([dataset[item] for item in a_holders])["a"]["pixel_values"]
        width = expected_b.shape[1]
        assert torch.equal(extra["b"]["input_ids"][extra["b_id"] >= 0][:, :width], expected_b)
        assert torch.equal(extra["a"]["pixel_values"][extra["a_id"] >= 0], expected_a)
    by_teacher = CachedCandidatesDataModule(inner, cache_dir=str(built_cache), candidates_per_anchor=2)
    by_teacher.setup("fit")
    batch = next(iter(by_teacher.train_dataloader()))
    items = torch.tensor([tables.item_of_b[b_id] for b_id in batch["b_id"].tolist()])
    for direction, side in (("a2b", "b"), ("b2a", "a")):  # the two highest teacher scores of each anchor's K
        ids, scores = getattr(tables, f"{direction}_ids")[items], getattr(tables, f"{direction}_scores")[items]
        chosen = batch["teacher_cache_extra"][f"{side}_id"].view(-1, 2)
        for row in range(len(items)):
            valid = ids[row] >= 0
            best = scores[row][valid].sort(descending=True).values[:2]
            picked = [float(scores[row][ids[row].tolist().index(i)]) for i in chosen[row].tolist() if i >= 0]
            assert picked == pytest.approx(best.tolist()[:len(picked)])
    with pytest.raises(InputError, match="data.init_args.candidates_per_anchor must be between 1 and the cache's "
                                         "K = 4, got 5: lower it, or build the cache with cache-teacher --k 5"):
        bad = CachedCandidatesDataModule(inner, cache_dir=str(built_cache), candidates_per_anchor=5)
        bad.setup("fit")
        bad.train_dataloader()
    with pytest.raises(ValueError, match=r"data.init_args.batching must be one of \['random', 'grouped'\]"):
        CachedCandidatesDataModule(inner, batching="topic")


def test_extra_candidates_are_scored_by_the_student_with_their_cached_teacher_scores(built_cache: Path) -> None:
    """Each valid candidate column of a random cached batch is the anchor's cached candidate: the student's score is
    the anchor embedding times that item's embedding, the teacher score the cached one."""
    inner = ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA)
    datamodule = CachedCandidatesDataModule(inner, cache_dir=str(built_cache), candidates_per_anchor=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    module = DistillationModule(make_student(), None, {"infonce": InfoNCE(), "cprd": CPRD(top_m=2)},
                                num_hard_negatives=4, candidates=CachedCandidates(str(built_cache))).eval()
    with torch.no_grad():
        inputs, stats = module.build_loss_inputs(batch)
        images = module.student.encode_a(batch["a"])
        captions = module.student.encode_b(batch["b"])
        extra_captions = module.student.encode_b(batch["teacher_cache_extra"]["b"])
        extra_images = module.student.encode_a(batch["teacher_cache_extra"]["a"])
    cache, extra = batch["teacher_cache"], batch["teacher_cache_extra"]
    assert stats["teacher_pairs"] == 0 and stats["cached_negatives_a2b"] > 0
    for direction, anchors, columns, column_ids in (
            ("a2b", images, torch.cat([captions, extra_captions]), torch.cat([batch["b_id"], extra["b_id"]])),
            ("b2a", captions, torch.cat([images, extra_images]), torch.cat([batch["a_id"], extra["a_id"]]))):
        expected, teacher = resolve_cached_candidates(cache[f"{direction}_ids"], cache[f"{direction}_scores"],
                                                      cache["pair_scores"], column_ids, 4)
        scores = getattr(inputs, direction)
        assert torch.equal(scores.valid, expected.valid)
        assert int(scores.valid[:, 1:].sum()) >= int((extra[f"{'b' if direction == 'a2b' else 'a'}_id"] >= 0).sum())
        student = (anchors @ columns.T).gather(1, expected.index)
        assert torch.allclose(scores.student[scores.valid], student[expected.valid], atol=1e-5)
        assert torch.allclose(scores.teacher[scores.valid], teacher[expected.valid], atol=1e-6)



def test_extras_without_gradient_give_the_same_losses_and_constant_candidate_embeddings(
        built_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``extra_gradient=False`` changes the backward pass only: equal losses, extras encoded without gradient, and
    parameter gradients that differ from the default's by the extras' share."""
    inner = ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA)
    datamodule = CachedCandidatesDataModule(inner, cache_dir=str(built_cache), candidates_per_anchor=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    extras: list[torch.Tensor] = []
    original = CachedCandidates._extra

    def watched(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        extras.append(found.embeddings)
        return found

    monkeypatch.setattr(CachedCandidates, "_extra", staticmethod(watched))
    losses, grads = {}, {}
    for gradient in (True, False):
        torch.manual_seed(0)
        module = DistillationModule(make_student(), None, {"infonce": InfoNCE(), "cprd": CPRD(top_m=2)},
                                    num_hard_negatives=4,
                                    candidates=CachedCandidates(str(built_cache), extra_gradient=gradient)).eval()
        extras.clear()
        inputs, _ = module.build_loss_inputs(batch)
        total = sum(loss(inputs) for loss in module.losses.values())
        total.backward()
        assert len(extras) == 2 and all(e.requires_grad is gradient for e in extras)
        losses[gradient] = float(total.detach())
        grads[gradient] = torch.cat([p.grad.flatten() for p in module.student.parameters() if p.grad is not None])
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert not torch.allclose(grads[True], grads[False], atol=1e-7)


def test_grouped_cached_batches_hold_seed_candidates(built_cache: Path) -> None:
    datamodule = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=12, **DATA),
                                            cache_dir=str(built_cache), batching="grouped")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 48 // 12
    for batch in batches:
        assert batch["b_id"].unique().numel() == 12  # distinct items
        cache = batch["teacher_cache"]
        seed_candidates = set(cache["a2b_ids"][0].tolist()) - {-1}  # row 0 is a seed: all present
        assert seed_candidates <= set(batch["b_id"].tolist())


def test_cached_recipe_trains_through_the_cli(tmp_path: Path, teacher_dir: Path, built_cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data_args = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in DATA_ARGS]
    cli = fit_and_check(["--config", str(CACHED_RECIPE), f"--model.init_args.candidates.init_args.path={built_cache}",
                         "--model.init_args.num_hard_negatives=4",
                         f"--model.init_args.teacher.init_args.weights={teacher_dir}", *data_args, *STUDENT_ARGS,
                         "--trainer.fast_dev_run=true", "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/teacher_pairs"]) == 0.0  # the teacher was never called in training
    assert float(metrics["train/cached_negatives_a2b"]) > 0.0


def test_cache_teacher_builds_from_the_cached_recipe_itself(tmp_path: Path, teacher_dir: Path, built_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The command in the cached recipes' header: no --out, the cache goes to the recipe's CachedCandidates path
    (which does not exist yet), and it equals the cache built from the plain recipe with --out."""
    monkeypatch.chdir(tmp_path)
    data_args = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in DATA_ARGS]
    out = tmp_path / "from-cached-recipe"
    torch.set_num_threads(1)
    cache_main(["--config", str(CACHED_RECIPE), *BUILD_ARGS, *data_args, *STUDENT_ARGS,
                f"--model.init_args.candidates.init_args.path={out}",
                f"--model.init_args.teacher.init_args.weights={teacher_dir}"])
    built = sorted(path.name for path in built_cache.iterdir())
    assert sorted(path.name for path in out.iterdir()) == built
    shards = [name for name in built if name.endswith(".safetensors")]
    assert shards
    for name in shards:
        assert (out / name).read_bytes() == (built_cache / name).read_bytes()


@pytest.mark.slow
def test_cached_training_under_lightning_ddp(built_cache: Path, teacher_dir: Path) -> None:
    """Lightning injects a DistributedSampler into the cache-aware batch sampler; 2 CPU processes train."""

    class SamplerCheck(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            sampler = trainer.train_dataloader.batch_sampler.sampler
            assert isinstance(sampler, DistributedSampler) and sampler.num_replicas == 2

    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(weights=str(teacher_dir))
    module = DistillationModule(make_student(), teacher, {"infonce": InfoNCE(), "cprd": CPRD(top_m=3),
                                                          "dcd": DCD(num_hard_negatives=2), "kl": LogitKL(),
                                                          "margin_mse": MarginMSE()},
                                num_hard_negatives=4, candidates=CachedCandidates(str(built_cache)),
                                evaluator=RecallEvaluator(diagnostics=False))
    before = module.student.proj_a.weight.detach().clone()
    datamodule = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    # The BERT text tower's pooler is built but unused (CLS pooling), so DDP must look for unused parameters.
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true", max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[SamplerCheck()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    assert not torch.equal(module.student.proj_a.weight, before)


def _shards(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("complete", [True, False])
def test_a_damaged_shard_is_recomputed_not_trusted(tmp_path: Path, teacher_dir: Path, built_cache: Path,
                                                   complete: bool) -> None:
    """A truncated shard in a complete cache, or in a build killed half way, is found and computed again."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(built_cache, out)
    if not complete:  # a killed build: no manifest yet, the progress record lists what was written
        manifest = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").unlink()
        (out / PLAN_NAME).write_text(json.dumps({k: v for k, v in manifest.items() if k != "shards"}))
        (out / ".build-progress-rank0.json").write_text(json.dumps({e["file"]: e["sha256"] for e in manifest["shards"]}))
    victim = out / "a2b-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-7])
    cache_main(_cache_args(out, teacher_dir))
    assert _shards(out) == _shards(built_cache)
    assert (out / "manifest.json").read_bytes() == (built_cache / "manifest.json").read_bytes()


def test_training_on_a_damaged_cache_is_one_line(tmp_path: Path, built_cache: Path) -> None:
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(built_cache, out)
    victim = out / "b2a-00000.safetensors"
    victim.write_bytes(victim.read_bytes()[:-3])
    data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=12, **DATA), cache_dir=str(out))
    with pytest.raises(CacheMismatchError, match="b2a-00000.safetensors' does not match its sha256"):
        data.setup("fit")


@pytest.mark.slow
def test_two_processes_build_the_single_process_cache_byte_for_byte(tmp_path: Path, teacher_dir: Path,
                                                                      built_cache: Path) -> None:
    """Two processes (torchrun's RANK / WORLD_SIZE) share the shards of one plan; the merged folder equals the
    one-process build. A rank killed before it finishes leaves its shards to a rerun of that rank."""
    out = tmp_path / "shared"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src"), "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "distill", "cache-teacher", *_cache_args(out, teacher_dir)]
    kill_after_first_shard(command, {**base, "RANK": "1"}, tmp_path, out)
    done = subprocess.run(command, env={**base, "RANK": "0"}, cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not (out / "manifest.json").exists()  # rank 1's shards are missing
    rerun = subprocess.run(command, env={**base, "RANK": "1"}, cwd=tmp_path, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert _shards(out) == _shards(built_cache)
    assert (out / "manifest.json").read_bytes() == (built_cache / "manifest.json").read_bytes()


def test_teacher_max_pairs_bounds_every_cache_forward(tmp_path: Path) -> None:
    datamodule = tiny_shapes(num_train=8, batch_size=8)
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    sizes: list[int] = []
    original = teacher.score_pairs

    def counting(a, b, a_index, b_index):  # type: ignore[no-untyped-def]
        sizes.append(int(a_index.numel()))
        return original(a, b, a_index, b_index)

    teacher.score_pairs = counting  # type: ignore[method-assign]
    build_teacher_cache(make_student(), teacher, datamodule, tmp_path / "cache",
                        BuildSettings(k=4, shard_size=8, teacher_max_pairs=5), progress=False)
    assert sizes and max(sizes) <= 5 and sum(sizes) > 5

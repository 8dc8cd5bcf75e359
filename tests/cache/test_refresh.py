"""Cache refresh (ANCE): a new student re-mines, the teacher scores only pairs no earlier cache holds; resumable,
byte-identical after a kill, shared by two processes, and run by the CacheRefresh callback during training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.cache import CachedCandidatesDataModule, load_cache
from distill.cache.twins import twin_counts, twin_share
from distill.cli.cache_teacher import _build_from_recipe
from distill.cli.cache_teacher import main as cache_main
from distill.data import ShapesDataModule
from distill.errors import InputError
from distill.losses import CPRD, InfoNCE
from distill.teachers import ShapesCrossEncoder
from distill.training import DistillationModule
from distill.training.callbacks import CacheRefresh
from distill.training.candidates import CachedCandidates
from tests.cache.test_cache import (  # noqa: F401  (module fixtures)
    DATA_ARGS, NUM_TRAIN, RECIPE, STUDENT_ARGS, _cache_args, _folder_bytes, built_cache, teacher_dir)
from tests.helpers import DATA, REPO_ROOT, kill_after_first_shard, make_student


def _pairs(folder: Path) -> list[tuple[tuple[int, int], float]]:
    """Every (a id, b id) pair a cache scores, with its score, once per place it holds it."""
    cache = load_cache(folder)
    pairs = [((a, b), s) for a, b, s in zip(cache.pair_a_ids.tolist(), cache.pair_b_ids.tolist(),
                                            cache.pair_scores.tolist())]
    for direction in ("a2b", "b2a"):
        for anchor, ids, scores in zip(cache.anchor_ids[direction].tolist(), cache.candidate_ids[direction].tolist(),
                                       cache.teacher_scores[direction].tolist()):
            pairs += [((anchor, c) if direction == "a2b" else (c, anchor), score) for c, score in zip(ids, scores)
                      if c >= 0]
    return pairs


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path) -> Path:
    """A checkpoint of the recipe's student with other weights: it mines other candidates."""
    model, _ = _build_from_recipe(str(RECIPE), [*DATA_ARGS, *STUDENT_ARGS,
                                                f"--model.init_args.teacher.init_args.weights={teacher_dir}"])
    torch.manual_seed(5)
    trained = {name for name, _ in model.student.named_parameters()}
    state = {f"student.{name}": value + 0.5 * torch.randn_like(value) if name in trained else value
             for name, value in model.student.state_dict().items()}
    path = tmp_path_factory.mktemp("student") / "other.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def _refresh_args(out: Path, teacher_dir: Path, parent: Path, ckpt: Path | None) -> list[str]:
    return [*_cache_args(out, teacher_dir), "--refresh-from", str(parent),
            *(["--student-ckpt", str(ckpt)] if ckpt is not None else [])]


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path, built_cache: Path,
              student_ckpt: Path) -> tuple[Path, int]:
    """An uninterrupted refresh of ``built_cache`` by the other student, and the pairs the teacher scored."""
    out = tmp_path_factory.mktemp("refresh") / "gen1"
    scored: list[int] = []
    original = ShapesCrossEncoder.score_pairs

    def counting(self, a, b, a_index, b_index):  # type: ignore[no-untyped-def]
        scored.append(int(a_index.numel()))
        return original(self, a, b, a_index, b_index)

    ShapesCrossEncoder.score_pairs = counting  # type: ignore[method-assign]
    try:
        cache_main(_refresh_args(out, teacher_dir, built_cache, student_ckpt))
    finally:
        ShapesCrossEncoder.score_pairs = original  # type: ignore[method-assign]
    return out, sum(scored)


def test_refresh_scores_only_new_pairs_and_copies_known_scores(built_cache: Path, refreshed: tuple[Path, int]) -> None:
    out, teacher_pairs = refreshed
    old, new = dict(_pairs(built_cache)), _pairs(out)
    manifest = json.loads((out / "manifest.json").read_text())
    known = [(pair, score) for pair, score in new if pair in old]
    fresh = [pair for pair, _ in new if pair not in old]
    assert fresh and len(known) > NUM_TRAIN * 3  # the other student mined new pairs; the training pairs are known
    assert all(score == old[pair] for pair, score in known)  # the old cache's scores, bit for bit
    assert manifest["pairs_reused"] == len(known) and manifest["pairs_scored"] == len(fresh) == teacher_pairs
    assert manifest["refresh_from"] == [{"folder": built_cache.name, "manifest_sha256": __import__(
        "hashlib").sha256((built_cache / "manifest.json").read_bytes()).hexdigest()}]


def test_refresh_by_the_building_student_reproduces_the_cache_without_the_teacher(
        tmp_path: Path, teacher_dir: Path, built_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ShapesCrossEncoder, "score_pairs", lambda *args: pytest.fail("the teacher was called"))
    out = tmp_path / "same"
    cache_main(_refresh_args(out, teacher_dir, built_cache, None))
    shards = sorted(path.name for path in built_cache.glob("*.safetensors"))
    assert all((out / name).read_bytes() == (built_cache / name).read_bytes() for name in shards)
    assert json.loads((out / "manifest.json").read_text())["pairs_scored"] == 0


def test_refresh_refuses_its_parent_as_out_and_a_cache_of_another_set_up(
        tmp_path: Path, teacher_dir: Path, built_cache: Path) -> None:
    with pytest.raises(InputError, match="--out '.*' is the command's own --refresh-from"):
        cache_main(_refresh_args(built_cache, teacher_dir, built_cache, None))
    with pytest.raises(InputError, match="--refresh-from needs --out"):
        cache_main([a for a in _refresh_args(tmp_path / "x", teacher_dir, built_cache, None)
                    if a not in ("--out", str(tmp_path / "x"))])
    args = [*_refresh_args(tmp_path / "other", teacher_dir, built_cache, None), "--teacher-precision", "bf16"]
    with pytest.raises(InputError, match=r"--refresh-from '.*' holds scores of another set-up: teacher"):
        cache_main(args)


@pytest.mark.slow
def test_refresh_killed_and_shared_by_two_processes_is_byte_identical(
        tmp_path: Path, teacher_dir: Path, built_cache: Path, student_ckpt: Path,
        refreshed: tuple[Path, int]) -> None:
    """A refresh killed mid-way and rerun, with its shards shared by two processes (RANK / WORLD_SIZE), gives
    the folder of an uninterrupted one-process refresh, byte for byte."""
    out = tmp_path / "gen1"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src"), "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "distill", "cache-teacher",
               *_refresh_args(out, teacher_dir, built_cache, student_ckpt)]
    stderr = kill_after_first_shard(command, {**base, "RANK": "1"}, tmp_path, out)
    assert list(out.glob("*.safetensors")), stderr
    done = subprocess.run(command, env={**base, "RANK": "0"}, cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not (out / "manifest.json").exists()  # rank 1's shards are missing
    rerun = subprocess.run(command, env={**base, "RANK": "1"}, cwd=tmp_path, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert _folder_bytes(out) == _folder_bytes(refreshed[0])


def test_twin_counts_match_a_brute_force_count(built_cache: Path) -> None:
    from distill.data.shapes import layout_are_twins

    data = ShapesDataModule(num_train=NUM_TRAIN, batch_size=12, **DATA)
    data.setup("fit")
    corpus, cache = data.corpus, load_cache(built_cache)
    counts, shares = twin_counts(cache, corpus, k=3), twin_share(cache, corpus, k=3)
    signature = {item.image_id: item.signature for item in corpus.items()}
    per = corpus.captions_per_image
    for row, (image, ids) in enumerate(zip(cache.anchor_ids["a2b"].tolist(), cache.candidate_ids["a2b"].tolist())):
        expected = sum(layout_are_twins(signature[image], signature[c // per], corpus.layout) for c in ids[:3] if c >= 0)
        assert counts["a2b"][row] == expected
    for row, (caption, ids) in enumerate(zip(cache.anchor_ids["b2a"].tolist(), cache.candidate_ids["b2a"].tolist())):
        expected = sum(layout_are_twins(signature[caption // per], signature[c], corpus.layout) for c in ids[:3] if c >= 0)
        assert counts["b2a"][row] == expected
    assert shares["a2b"].anchors == NUM_TRAIN and shares["b2a"].anchors == NUM_TRAIN * per
    assert shares["a2b"].with_twin == int((counts["a2b"] > 0).sum())
    has_twin = {item.image_id: any(layout_are_twins(item.signature, other.signature, corpus.layout)
                                   for other in corpus.train) for item in corpus.train}
    assert shares["a2b"].possible == sum(has_twin.values()) >= shares["a2b"].with_twin
    assert shares["b2a"].possible == per * sum(has_twin.values()) >= shares["b2a"].with_twin

    import importlib.util

    spec = importlib.util.spec_from_file_location("cache_twins", REPO_ROOT / "benchmarks" / "cache_twins.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    row = benchmark.table([str(built_cache)], [3]).splitlines()[-1]  # the corpus generated from the manifest alone
    share = shares["a2b"]
    assert row.startswith(f"| {built_cache.name} | ") and f"| 3 | {100 * share.share:.1f}% (" in row


def _module(teacher_dir: Path, cache: Path) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(make_student(), ShapesCrossEncoder(weights=str(teacher_dir)),
                              {"infonce": InfoNCE(), "cprd": CPRD(top_m=2)}, num_hard_negatives=4,
                              candidates=CachedCandidates(str(cache)))


def _trainer(root: Path, max_steps: int, refresh: CacheRefresh, **kwargs: object) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, default_root_dir=root, callbacks=[refresh],
                     **kwargs)


def test_training_refreshes_the_cache_and_resumes_on_the_refreshed_one(
        tmp_path: Path, teacher_dir: Path, built_cache: Path) -> None:
    import shutil

    first = tmp_path / "cache"
    shutil.copytree(built_cache, first)
    refresh = CacheRefresh(every_n_steps=2)
    data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    module = _module(teacher_dir, first)
    seen: list[tuple[list[int], list[list[int]]]] = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            seen.append((batch["a_id"].tolist(), batch["teacher_cache"]["a2b_ids"].tolist()))

    def generation_of(a_ids: list[int], rows: list[list[int]]) -> list[str]:
        """The cache folders whose a2b candidates the batch carries."""
        found = []
        for folder in sorted(tmp_path.glob("cache*")):
            cache = load_cache(folder)
            row_of = {a: r for r, a in enumerate(cache.anchor_ids["a2b"].tolist())}
            if all(cache.candidate_ids["a2b"][row_of[a]].tolist() == row for a, row in zip(a_ids, rows)):
                found.append(folder.name)
        return found

    trainer = _trainer(tmp_path, 5, refresh, enable_checkpointing=True)
    trainer.callbacks.append(Watch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    generation = tmp_path / "cache-step2"
    manifest = json.loads((generation / "manifest.json").read_text())
    assert refresh.generations[:2] == [str(first), str(generation)]
    assert manifest["refresh_from"][0]["folder"] == "cache" and manifest["pairs_reused"] > 0
    assert data.cache.path == tmp_path / "cache-step4"
    assert [generation_of(*batch) for batch in seen] == [["cache"], ["cache"], ["cache-step2"], ["cache-step2"],
                                                        ["cache-step4"]]
    assert set(data.tables.a2b_ids.reshape(-1).tolist()) <= set(load_cache(data.cache.path).candidate_ids["a2b"]
                                                                 .reshape(-1).tolist())
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    state = next(value for key, value in checkpoint["callbacks"].items() if "CacheRefresh" in key)
    assert state["generations"][-1] == str(tmp_path / "cache-step4")

    resumed_refresh = CacheRefresh(every_n_steps=2)
    resumed_data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 6, resumed_refresh).fit(_module(teacher_dir, first), datamodule=resumed_data,
                                                   ckpt_path=str(next(tmp_path.rglob("*.ckpt"))))
    assert resumed_data.cache.path == tmp_path / "cache-step4"
    assert not (tmp_path / "cache-step6").exists()  # the run's last step: no batch would read a refresh


def test_refresh_needs_the_teacher(tmp_path: Path, built_cache: Path) -> None:
    module = DistillationModule(make_student(), None, {"infonce": InfoNCE()}, num_hard_negatives=4,
                                candidates=CachedCandidates(str(built_cache)))
    data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    with pytest.raises(ValueError, match="CacheRefresh needs model.init_args.teacher"):
        _trainer(tmp_path, 2, CacheRefresh(every_n_steps=1)).fit(module, datamodule=data)


@pytest.mark.slow
def test_refresh_under_ddp_equals_a_one_process_refresh(tmp_path: Path, teacher_dir: Path, built_cache: Path) -> None:
    """Two CPU processes (gloo) refresh at step 1 of 2, each computing its share of the shards; the folder equals the
    refresh one process builds with the same student, byte for byte, and both processes read it."""
    import shutil

    from distill.cache.build import BuildSettings, build_teacher_cache

    first = tmp_path / "cache"
    shutil.copytree(built_cache, first)

    class Loaded(L.Callback):  # the processes are forked: each notes the cache it reads in a file
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.global_step == 1 and trainer.global_rank == 0:  # the student that refreshed at step 1
                torch.save(pl_module.student.state_dict(), tmp_path / "student-step1.pt")

        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            (tmp_path / f"rank{trainer.global_rank}").write_text(str(trainer.datamodule.cache.path))

    module = _module(teacher_dir, first)
    data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    trainer = _trainer(tmp_path, 2, CacheRefresh(every_n_steps=1), devices=2, enable_checkpointing=False,
                       strategy="ddp_fork_find_unused_parameters_true")
    trainer.callbacks.append(Loaded())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    generation = tmp_path / "cache-step1"
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text() == str(generation)
    single = tmp_path / "single" / "cache-step1"
    settings = BuildSettings(k=4, shard_size=8)
    data.data.setup("fit")  # the processes were forked: this one's data module was never set up
    module.student.load_state_dict(torch.load(tmp_path / "student-step1.pt", weights_only=True))
    build_teacher_cache(module.student, module.teacher, data, single, settings, progress=False, refresh_from=[first])
    assert _folder_bytes(single) == _folder_bytes(generation)


def test_cached_recipe_refreshes_through_the_cli(tmp_path: Path, teacher_dir: Path, built_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The callback as a recipe adds it: ``--trainer.callbacks+=distill.training.callbacks.CacheRefresh``."""
    import shutil

    from tests.cache.test_cache import CACHED_RECIPE
    from tests.helpers import fit_and_check

    monkeypatch.chdir(tmp_path)
    shutil.copytree(built_cache, tmp_path / "cache")
    data_args = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in DATA_ARGS]
    cli = fit_and_check(["--config", str(CACHED_RECIPE), f"--model.init_args.candidates.init_args.path={tmp_path}/cache",
                         "--model.init_args.num_hard_negatives=4", *data_args, *STUDENT_ARGS,
                         f"--model.init_args.teacher.init_args.weights={teacher_dir}",
                         "--trainer.callbacks+=distill.training.callbacks.CacheRefresh",
                         "--trainer.callbacks.every_n_steps=1", "--trainer.fast_dev_run=2", "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    manifest = json.loads((tmp_path / "cache-step1" / "manifest.json").read_text())
    assert float(metrics["train/cache_pairs_scored"]) == manifest["pairs_scored"]
    assert float(metrics["train/cache_pairs_reused"]) == manifest["pairs_reused"] > 0
    assert cli.datamodule.cache.path == tmp_path / "cache-step1"


def test_a_generation_left_by_another_student_is_replaced_and_a_foreign_folder_refused(
        tmp_path: Path, teacher_dir: Path, built_cache: Path) -> None:
    """A resumed run that reaches a refresh step again finds the folder its first attempt built with other
    weights: it is rebuilt with the current student. A folder holding anything else is never deleted."""
    import shutil

    first, stale = tmp_path / "cache", tmp_path / "cache-step1"
    shutil.copytree(built_cache, first)
    shutil.copytree(built_cache, stale)  # built by the recipe's student, not this run's
    data = CachedCandidatesDataModule(ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA))
    module = _module(teacher_dir, first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 2, CacheRefresh(every_n_steps=1), enable_checkpointing=False).fit(module, datamodule=data)
    rebuilt = json.loads((stale / "manifest.json").read_text())
    assert rebuilt["student"] != json.loads((built_cache / "manifest.json").read_text())["student"]
    assert rebuilt["refresh_from"][0]["folder"] == "cache"

    def run_again() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(tmp_path, 2, CacheRefresh(every_n_steps=1), enable_checkpointing=False).fit(
                _module(teacher_dir, first), datamodule=CachedCandidatesDataModule(
                    ShapesDataModule(num_train=NUM_TRAIN, batch_size=6, **DATA)))

    before = _folder_bytes(stale)
    run_again()  # the same student again (a deterministic resume): the folder is confirmed, not rebuilt
    assert _folder_bytes(stale) == before

    shutil.rmtree(stale)
    shutil.copytree(built_cache, stale)
    (stale / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="cache-step1' holds a cache of another student and 'notes.txt', which distill "
                                         "did not write: move it out"):
        run_again()
    assert (stale / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("max_steps", "max_epochs", "epoch", "batch_idx", "step", "last"), [
    (10, None, 0, 9, 10, True), (10, None, 0, 8, 9, False),          # step-bound: max_steps decides
    (-1, 2, 1, 3, 8, True), (-1, 2, 0, 3, 4, False), (-1, 2, 1, 2, 7, False)])  # epoch-bound, 4 batches per epoch
def test_no_refresh_is_built_after_the_last_batch(max_steps: int, max_epochs: int | None, epoch: int, batch_idx: int,
                                                  step: int, last: bool) -> None:
    from types import SimpleNamespace

    from distill.training.callbacks.cache_refresh import _last_batch

    trainer = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, current_epoch=epoch, num_training_batches=4)
    assert _last_batch(trainer, step, batch_idx) is last  # type: ignore[arg-type]

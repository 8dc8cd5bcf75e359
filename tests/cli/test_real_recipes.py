"""Each real-model recipe runs one fast_dev_run step through the CLI, pointed at tiny local models and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from tests.helpers import REPO_ROOT, fit_and_check

# Tiny randomly initialised teachers score every pair almost alike; the loss guard says so, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")


COMMON = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--data.init_args.num_workers=0",
          "--data.init_args.batch_size=4"]


def _run(recipe: str, tmp_path: Path, *overrides: str) -> None:
    """fast_dev_run of a real recipe: the losses are finite, the student trains, validation is in range."""
    cli = fit_and_check(["--config", str(REPO_ROOT / "configs" / recipe), f"--trainer.default_root_dir={tmp_path}",
                         *COMMON, *overrides])
    assert "val/score" in cli.trainer.callback_metrics


def tiny_overrides(recipe: str, tiny_models, image_text_data, beir_dir: Path) -> list[str]:
    """What points a real recipe at tiny local models and data."""
    if recipe.startswith("coco"):
        return [f"--model.init_args.student.init_args.pretrained={tiny_models.clip}",
                f"--model.init_args.teacher.init_args.pretrained={tiny_models.blip}",
                "--model.init_args.num_hard_negatives=3", "--model.init_args.evaluator.init_args.two_stage_k=4",
                f"--data.init_args.annotations={image_text_data['karpathy']}",
                f"--data.init_args.image_root={image_text_data['image_root']}",
                f"--data.init_args.student_processor={tiny_models.clip}",
                f"--data.init_args.teacher_processor={tiny_models.blip}"]
    if recipe.startswith("flickr"):
        return ["--model.init_args.student.init_args.tower_a.init_args.model_name=resnet10t",
                "--model.init_args.student.init_args.tower_a.init_args.pretrained=false",
                f"--model.init_args.student.init_args.tower_b.init_args.pretrained={tiny_models.bert}",
                "--model.init_args.student.init_args.embed_dim=16",
                f"--model.init_args.teacher.init_args.pretrained={tiny_models.vilt}",
                "--model.init_args.num_hard_negatives=3",
                f"--data.init_args.annotations={image_text_data['karpathy']}",
                f"--data.init_args.image_root={image_text_data['image_root']}",
                f"--data.init_args.student_tokenizer={tiny_models.bert}",
                f"--data.init_args.teacher_processor={tiny_models.vilt}",
                "--data.init_args.image_size=32"]
    return [f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
            "--model.init_args.num_hard_negatives=2", f"--data.init_args.data_dir={beir_dir}",
            f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
            "--data.init_args.passage_max_length=32", "--data.init_args.eval_batch_size=4",
            "--trainer.val_check_interval=1.0"]


REAL_RECIPES = ["coco/blip-itm-to-clip-cprd.yaml", "flickr/vilt-to-timm-bert-dcd.yaml",
                "msmarco/cross-encoder-to-minilm-margin-mse.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REAL_RECIPES, ids=lambda r: r.split("/")[0])
# Without a logger the resumed run writes into the interrupted run's checkpoint folder, on purpose.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_sigterm_and_resume_end_where_an_uninterrupted_run_ends(recipe: str, tmp_path: Path, tiny_models,
                                                                image_text_data, beir_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every real recipe composes the guards: SIGTERM saves last.ckpt, and `--ckpt_path last` resumes to the
    weights of a run that was never interrupted."""
    import signal

    import torch

    from distill.cli.recipe import DistillCLI

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO_ROOT / "configs" / recipe), *tiny_overrides(recipe, tiny_models,
            image_text_data, beir_dir), "--trainer.max_steps=4", "--trainer.max_epochs=-1", "--trainer.logger=false",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    reference = DistillCLI(args=[*args, f"--trainer.default_root_dir={tmp_path / 'reference'}"])
    send = '{"class_path": "tests.helpers.SendSignal", "init_args": {"at_batch": 2, "signum": "SIGTERM"}}'
    with pytest.raises(SystemExit) as stopped:
        DistillCLI(args=[*args, f"--trainer.default_root_dir={tmp_path / 'run'}", f"--trainer.callbacks+={send}"])
    assert stopped.value.code == 128 + signal.SIGTERM
    resumed = DistillCLI(args=[*args, f"--trainer.default_root_dir={tmp_path / 'run'}", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == reference.trainer.global_step == 4
    expected, got = reference.model.student.state_dict(), resumed.model.student.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_coco_blip_itm_to_clip_cprd(tmp_path: Path, tiny_models, image_text_data,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run("coco/blip-itm-to-clip-cprd.yaml", tmp_path,
         f"--model.init_args.student.init_args.pretrained={tiny_models.clip}",
         f"--model.init_args.teacher.init_args.pretrained={tiny_models.blip}",
         "--model.init_args.num_hard_negatives=3",
         f"--data.init_args.annotations={image_text_data['karpathy']}",
         f"--data.init_args.image_root={image_text_data['image_root']}",
         f"--data.init_args.student_processor={tiny_models.clip}",
         f"--data.init_args.teacher_processor={tiny_models.blip}")



def test_coco_cached_recipe_builds_its_cache_and_trains_from_it(tmp_path: Path, tiny_models, image_text_data,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands in the COCO cached recipe's header, with tiny CLIP and BLIP: cache-teacher scores each anchor's
    candidates once, then a fit step reads them as extras (without gradient) and never calls BLIP."""
    from distill.cli.cache_teacher import main as cache_main

    monkeypatch.chdir(tmp_path)
    overrides = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in
                 [*tiny_overrides("coco", tiny_models, image_text_data, tmp_path), *COMMON]]
    common = ["--config", str(REPO_ROOT / "configs/coco/blip-itm-to-clip-cached-cprd-kl.yaml"), *overrides,
              f"--model.init_args.candidates.init_args.path={tmp_path / 'cache'}"]
    cache_main([arg for arg in common if "fast_dev_run" not in arg] + ["--k", "3", "--no-progress"])
    assert (tmp_path / "cache" / "manifest.json").is_file()
    cli = fit_and_check([*common, f"--trainer.default_root_dir={tmp_path}"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/teacher_pairs_total"]) == 0.0
    assert float(metrics["train/cached_negatives_a2b"]) >= 1.0  # each anchor's extras are among its candidates
    assert [source.extra_gradient for source in cli.model.candidates] == [False]
    assert cli.datamodule.candidates_per_anchor == 2


def test_flickr_vilt_to_timm_bert_dcd(tmp_path: Path, tiny_models, image_text_data,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run("flickr/vilt-to-timm-bert-dcd.yaml", tmp_path,
         "--model.init_args.student.init_args.tower_a.init_args.model_name=resnet10t",
         "--model.init_args.student.init_args.tower_a.init_args.pretrained=false",
         f"--model.init_args.student.init_args.tower_b.init_args.pretrained={tiny_models.bert}",
         "--model.init_args.student.init_args.embed_dim=16",
         f"--model.init_args.teacher.init_args.pretrained={tiny_models.vilt}",
         "--model.init_args.num_hard_negatives=3",
         f"--data.init_args.annotations={image_text_data['karpathy']}",
         f"--data.init_args.image_root={image_text_data['image_root']}",
         f"--data.init_args.student_tokenizer={tiny_models.bert}",
         f"--data.init_args.teacher_processor={tiny_models.vilt}",
         "--data.init_args.image_size=32")


def test_msmarco_cross_encoder_to_minilm_margin_mse(tmp_path: Path, tiny_models, beir_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The student stays the real packaged all-MiniLM-L6-v2 of the preset.
    _run("msmarco/cross-encoder-to-minilm-margin-mse.yaml", tmp_path,
         f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
         "--model.init_args.num_hard_negatives=2",
         f"--data.init_args.data_dir={beir_dir}",
         f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
         "--data.init_args.passage_max_length=32", "--data.init_args.eval_batch_size=4",
         "--trainer.val_check_interval=1.0")


def test_msmarco_sanity_check_scores_the_queries_it_encoded(tmp_path: Path, tiny_models, beir_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's sanity check (2 batches of 1 query out of 3 judged) and a validation limited to 2 batches
    score the queries they encoded instead of stopping on the judged queries they did not reach."""
    from distill.cli.recipe import DistillCLI

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO_ROOT / "configs" / "msmarco/cross-encoder-to-minilm-margin-mse.yaml"),
            *tiny_overrides("msmarco", tiny_models, {}, beir_dir), "--data.init_args.eval_batch_size=1",
            "--trainer.max_steps=1", "--trainer.limit_val_batches=2", "--trainer.logger=false",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}"]
    cli = DistillCLI(args=args)
    assert cli.trainer.num_sanity_val_steps == 2
    assert cli.trainer.callback_metrics["val/queries"] == 2


def test_recipe_with_missing_weights_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO_ROOT / "configs/coco/blip-itm-to-clip-cprd.yaml"), *COMMON,
              f"--model.init_args.student.init_args.pretrained={tmp_path / 'no-clip'}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "model.init_args.student.init_args.pretrained (CLIPDualEncoder)='" in error
    assert "no-clip': no such folder" in error

"""Every grid recipe (configs/demo/grid-*.yaml) runs one fast_dev_run step; the grid data preset is what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from distill.teachers import ShapesCrossEncoder
from tests.helpers import REPO_ROOT, fit_and_check

DEMO = REPO_ROOT / "configs" / "demo"
GRID_RECIPES = sorted(p.name for p in DEMO.glob("grid-*.yaml") if "cached" not in p.name)
TINY = ["--data.init_args.num_train=48", "--data.init_args.num_val=8", "--data.init_args.num_test=8",
        "--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=16", "--data.init_args.image_size=32"]


@pytest.fixture(scope="module")
def tiny_matched_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    teacher = ShapesCrossEncoder(towers="student", image_size=32, max_length=40, embed_dim=64, width=32, heads=2,
                                 text_layers=1, image_channels=(8, 16, 16, 32), text_intermediate=64,
                                 fusion_layers=1, fusion_stage=3, fusion_raw=True, mlp_ratio=2)
    return teacher.save_pretrained(tmp_path_factory.mktemp("matched-teacher"))


@pytest.mark.filterwarnings("ignore:student/teacher scale mismatch")  # a random tiny teacher scores alike
@pytest.mark.parametrize("recipe", GRID_RECIPES)
def test_grid_recipe_fast_dev_run(recipe: str, tmp_path: Path, tiny_matched_teacher: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (DEMO / recipe).read_text()
    args = ["fit", "--config", str(DEMO / recipe), "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", *TINY]
    if "CrossEncoderPretraining" in text:
        args += [f"--model.init_args.output_dir={tmp_path / 'teacher-out'}",
                 "--model.init_args.teacher.init_args.image_size=32"]
    elif "cross-encoder.yaml" in text:
        args += [f"--model.init_args.teacher.init_args.weights={tiny_matched_teacher}"]
    main(args)
    if "CrossEncoderPretraining" in text:
        saved = ShapesCrossEncoder(weights=str(tmp_path / "teacher-out"))
        assert saved.config.towers == "student" and saved.config.embed_dim == 64


def test_grid_preset_and_teacher_recipe_describe_the_same_split() -> None:
    import yaml

    preset = yaml.safe_load((DEMO / "data-grid.yaml").read_text())["init_args"]
    teacher_data = yaml.safe_load((DEMO / "grid-teacher.yaml").read_text())["data"]["init_args"]
    assert {**preset, "binding_negatives": True} == teacher_data
    assert preset["layout"] == "grid" and preset["num_objects"] * 7 + 1 <= preset["max_length"]


CACHED_GRID_RECIPES = sorted(p.name for p in DEMO.glob("grid-cached-*.yaml"))


@pytest.mark.filterwarnings("ignore:student/teacher scale mismatch")
@pytest.mark.parametrize("recipe", CACHED_GRID_RECIPES)
def test_cached_grid_recipe_builds_its_cache_and_trains_from_it(recipe: str, tmp_path: Path, tiny_matched_teacher: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands in the recipe's header, at tiny size: cache-teacher, then one fit step that reads the cache as
    random batches with extras and never calls the teacher."""
    from distill.cli.cache_teacher import main as cache_main

    monkeypatch.chdir(tmp_path)
    data = [arg.replace("--data.init_args.", "--data.init_args.data.init_args.") for arg in TINY]
    common = ["--config", str(DEMO / recipe), *data, f"--model.init_args.teacher.init_args.weights={tiny_matched_teacher}",
              f"--model.init_args.candidates.init_args.path={tmp_path / 'cache'}"]
    cache_main([*common, "--k", "8", "--no-progress"])
    assert (tmp_path / "cache" / "manifest.json").is_file()
    cli = fit_and_check([*common, "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
                         "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/teacher_pairs"]) == 0.0 and float(metrics["train/teacher_pairs_total"]) == 0.0
    assert float(metrics["train/cached_negatives_a2b"]) >= 1.0  # each anchor's extras are among its candidates
    assert cli.datamodule.batching == "random" and cli.datamodule.candidates_per_anchor == 2

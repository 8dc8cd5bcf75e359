"""fit -> test -> export: a test of a run's checkpoint logs into that run, so the export's card has its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from tests.helpers import DEMO, TINY

LOGGED = [arg for arg in TINY if arg != "--trainer.logger=false"]  # the default TensorBoard logger


def test_test_of_a_checkpoint_logs_beside_its_run_and_export_cards_the_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = ["--config", str(DEMO / "shapes-infonce.yaml"), f"--trainer.default_root_dir={tmp_path}", *LOGGED]
    main(["fit", *recipe, "--trainer.max_steps=2"])
    run = tmp_path / "lightning_logs" / "version_0"
    fit_config = (run / "config.yaml").read_text()
    capsys.readouterr()

    main(["test", *recipe, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    err = capsys.readouterr().err
    assert "dirpath" not in err and "warning" not in err.lower(), err
    assert sorted(path.name for path in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    assert (run / "config.yaml").read_text() == fit_config and (run / "config-test.yaml").is_file()

    main(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "export"), "--no-onnx"])
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| test/rsum |" in card and "Not measured" not in card

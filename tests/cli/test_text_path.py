"""A text user's path end to end, as separate commands with their output going to a log file: mine with the
student alone, fit with the teacher check on, test, export (test metrics in the card), index (document ids),
search re-ranked by a text cross-encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, write_beir

RECIPE = str(REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml")


def _run(log: Path, cwd: Path, *args: str) -> str:
    """``python -m distill <args>`` with stdout and stderr appended to ``log`` (not a terminal); returns stdout."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'src'}", "DISTILL_PROGRESS_SECONDS": "0",
           "HF_HUB_OFFLINE": "1", "DISTILL_TEACHER_CHECK": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "a", encoding="utf-8") as err:
        done = subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(done.stdout)
    assert done.returncode == 0, log.read_text()[-3000:]
    return done.stdout


@pytest.mark.slow
def test_text_path_from_a_beir_folder_to_a_re_ranked_search(tmp_path: Path, tiny_models) -> None:
    beir = write_beir(tmp_path / "beir")
    (beir / "train_triples.jsonl").unlink()
    log = tmp_path / "log.txt"
    data = [f"--data.init_args.data_dir={beir}", f"--data.init_args.student_tokenizer={tiny_models.bert}",
            f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}", "--data.init_args.passage_max_length=32",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=5", "--data.init_args.eval_batch_size=4",
            f"--model.init_args.student.init_args.pretrained={tiny_models.bert}"]
    teacher = ["--model.init_args.teacher=tests.helpers.LexicalTeacher"]
    logger = [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.log_every_n_steps=1"]

    _run(log, tmp_path, "mine", "--config", RECIPE, "--out", str(beir / "train_triples.jsonl"), "--negatives", "2",
         "--depth", "4", "--batch-size", "2", *data)
    _run(log, tmp_path, "fit", "--config", RECIPE, *data, *teacher, *logger, "--trainer.max_steps=2",
         "--trainer.max_epochs=2")
    run = next((tmp_path / "runs").rglob("config.yaml")).parent
    ckpt = run / "checkpoints" / "last.ckpt"
    table = _run(log, tmp_path, "test", "--config", RECIPE, *data, *teacher, *logger, f"--ckpt_path={ckpt}",
                 "--model.init_args.evaluator.init_args.two_stage_k=3")
    _run(log, tmp_path, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"), "--no-onnx")
    _run(log, tmp_path, "index", "--student", str(tmp_path / "export"), "--data", str(run / "config.yaml"),
         "--split", "test", "--out", str(tmp_path / "index"), "--chunk-size", "2")
    hits = _run(log, tmp_path, "search", "--index", str(tmp_path / "index"), "--query", "who wrote hamlet", "-k", "3",
                "--json", "--rerank-with", str(tiny_models.cross_encoder))

    text = log.read_text()
    assert "distill: teacher check passed: on 3 validation queries" in text
    for stage in ("encoding passages: ", "epoch 1/2 step ", "test batches: ", "encoding b: "):
        assert f"distill: {stage}" in text, stage
    assert "LOAD REPORT" not in text and "Loading weights" not in text
    assert "warning" not in text.lower(), [line for line in text.splitlines() if "warning" in line.lower()]
    assert "test/two_stage/ndcg@10" in table and "DataLoader" not in table
    assert "| test/ndcg@10 |" in (tmp_path / "export" / "README.md").read_text()
    result = json.loads(hits)["hits"]
    assert len(result) == 3 and all(hit["doc_id"].startswith("p") and "teacher_score" in hit for hit in result)

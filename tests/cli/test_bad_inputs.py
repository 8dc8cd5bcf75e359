"""Bad input, command by command: each case is one ``distill: error:`` line with a stable exit status, no
traceback, and output written before it is left byte for byte as it was.

Every case id appears in docs/troubleshooting.md (checked below), with the line the case prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main
from tests.helpers import REPO_ROOT, TINY, TINY_TEACHER, bert_tokenizer, write_beir, write_image_text_data

DEMO = REPO_ROOT / "configs" / "demo"
MSMARCO = REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml"
TROUBLESHOOTING = REPO_ROOT / "docs" / "troubleshooting.md"


class Assets:
    """Files the cases start from, built once: a trained run, its export, an index, a cache, data folders."""

    def __init__(self, root: Path) -> None:
        from distill.cli.export import export_checkpoint
        from distill.cli.index import main as index_main
        from distill.cli.recipe import DistillCLI
        from distill.teachers import ShapesCrossEncoder

        torch.manual_seed(0)
        self.root = root
        self.teacher = ShapesCrossEncoder(**TINY_TEACHER).save_pretrained(root / "teacher")
        DistillCLI(args=["fit", "--config", str(DEMO / "shapes-kl.yaml"), *TINY, "--trainer.max_steps=2",
                         f"--model.init_args.teacher.init_args.weights={self.teacher}",
                         "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
                         f"--trainer.logger.init_args.save_dir={root / 'runs'}", "--trainer.logger.init_args.name=kl",
                         f"--trainer.default_root_dir={root / 'runs'}"])
        self.ckpt = next((root / "runs").rglob("last.ckpt"))
        self.export = root / "export"
        export_checkpoint(self.ckpt, self.export, onnx=False)
        self.data_yaml = root / "data.yaml"
        self.data_yaml.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": {
            "num_train": 16, "num_val": 4, "num_test": 4, "image_size": 32, "batch_size": 8}}))
        self.index = root / "index"
        index_main(["--student", str(self.export), "--data", str(self.data_yaml), "--out", str(self.index),
                    "--backend", "numpy", "--no-progress"])
        self.images = write_image_text_data(root / "images", {"train": 4, "val": 2, "test": 2})
        self.tokenizer = root / "tokenizer"
        bert_tokenizer(self.tokenizer, model_max_length=64).save_pretrained(self.tokenizer)
        self.beir = write_beir(root / "beir")

    def copy(self, name: str, target: Path) -> Path:
        shutil.copytree(getattr(self, name), target)
        return target


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(tmp_path_factory.mktemp("assets"))


@dataclass
class Case:
    """``args(assets, tmp)`` is the command line; ``pattern`` a regex the one error line must match; ``kept`` the
    files (relative to ``tmp`` or absolute) whose bytes must not change."""

    id: str
    args: Callable[[Assets, Path], list[str]]
    pattern: str
    status: int = 2
    kept: Callable[[Assets, Path], list[Path]] | None = None


def fit(recipe: str, *extra: str) -> Callable[[Assets, Path], list[str]]:
    def build(assets: Assets, tmp: Path) -> list[str]:
        args = ["fit", "--config", str(DEMO / recipe), *TINY, f"--trainer.default_root_dir={tmp / 'run'}",
                "--trainer.max_steps=1"]
        if recipe != "shapes-infonce.yaml":
            args.append(f"--model.init_args.teacher.init_args.weights={assets.teacher}")
        return args + [item.format(tmp=tmp, assets=assets) for item in extra]
    return build


def command(*parts: str) -> Callable[[Assets, Path], list[str]]:
    return lambda assets, tmp: [part.format(tmp=tmp, assets=assets) for part in parts]


def read_only_folder(path: Path) -> Path:
    """A folder nobody may write into: mode 0555, and immutable (``chattr +i``) when running as root."""
    path.mkdir()
    os.chmod(path, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr: a read-only folder cannot be made here")
    return path


def writable_again(path: Path) -> None:
    if path.exists():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        os.chmod(path, stat.S_IRWXU)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(source: Path, target: Path, keep: int = 100) -> Path:
    return _write(target, source.read_bytes()[:keep])


PREPARE: dict[str, Callable[[Assets, Path], None]] = {
    "truncated-ckpt": lambda a, t: _truncated(a.ckpt, t / "cut.ckpt").touch(),
    "empty-ckpt": lambda a, t: _write(t / "empty.ckpt", b"").touch(),
    "dict-ckpt": lambda a, t: torch.save({"weights": torch.zeros(2)}, t / "dict.ckpt"),
    "pickled-ckpt": lambda a, t: torch.save({"state_dict": {}, "opts": Path("x")}, t / "evil.ckpt"),
    "cut-teacher": lambda a, t: (a.copy("teacher", t / "teacher"),
                                 _truncated(a.teacher / "model.safetensors", t / "teacher" / "model.safetensors")),
    "garbage-teacher": lambda a, t: (a.copy("teacher", t / "teacher"),
                                     _write(t / "teacher" / "model.safetensors", b"not safetensors at all" * 8)),
    "broken-teacher-config": lambda a, t: (a.copy("teacher", t / "teacher"),
                                           _write(t / "teacher" / "config.json", b'{"width": 32,')),
    "bad-yaml": lambda a, t: _write(t / "bad.yaml", b"model:\n  class_path: [unclosed\n"),
    "cut-export": lambda a, t: (a.copy("export", t / "export"),
                                _truncated(a.export / "model.safetensors", t / "export" / "model.safetensors")),
    "cut-index": lambda a, t: (a.copy("index", t / "index"),
                               _write(t / "index" / "dense.npy", (a.index / "dense.npy").read_bytes()[:-1])),
    "mixed-index": lambda a, t: (a.copy("index", t / "index"),
                                 _write(t / "index" / "items.jsonl", b'{"_id": "0", "id": 0, "a_id": 0, "text": "other"}\n')),
    "not-an-image": lambda a, t: _write(t / "query.png", b"plain text, not a PNG"),
    "metrics-list": lambda a, t: _write(t / "metrics.json", b"[1, 2]"),
    "read-only": lambda a, t: read_only_folder(t / "ro"),
}

CASES = [
    # ---------------------------------------------------------------- fit: data settings
    Case("fit-negative-batch-size", fit("shapes-infonce.yaml", "--data.init_args.batch_size=-4"),
         r"ShapesDataModule: data\.init_args\.batch_size must be >= 1, got -4"),
    Case("fit-zero-batch-size", fit("shapes-infonce.yaml", "--data.init_args.batch_size=0"),
         r"batch_size must be >= 1, got 0"),
    Case("fit-negative-num-train", fit("shapes-infonce.yaml", "--data.init_args.num_train=-5"),
         r"num_train must be >= 1, got -5"),
    Case("fit-zero-eval-batch-size", fit("shapes-infonce.yaml", "--data.init_args.eval_batch_size=0"),
         r"eval_batch_size must be >= 1, got 0"),
    Case("fit-zero-image-size", fit("shapes-infonce.yaml", "--data.init_args.image_size=0"),
         r"image_size must be .*got 0"),
    Case("fit-negative-workers", fit("shapes-infonce.yaml", "--data.init_args.num_workers=-1"),
         r"num_workers must be >= 0, got -1"),
    Case("fit-short-max-length", fit("shapes-infonce.yaml", "--data.init_args.max_length=4"),
         r"longer than data\.init_args\.max_length=4 tokens"),
    # ---------------------------------------------------------------- fit: checkpoints
    Case("fit-ckpt-truncated", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/cut.ckpt"),
         r"--ckpt_path '.*cut\.ckpt' is damaged or not a PyTorch checkpoint"),
    Case("fit-ckpt-empty", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/empty.ckpt"),
         r"--ckpt_path '.*empty\.ckpt' is empty"),
    Case("fit-ckpt-not-lightning", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/dict.ckpt"),
         r"--ckpt_path '.*dict\.ckpt' is not a Lightning checkpoint \(no state_dict\)"),
    Case("fit-ckpt-folder", fit("shapes-infonce.yaml", "--ckpt_path={tmp}"),
         r"--ckpt_path '.*' is a folder, not a checkpoint file"),
    Case("fit-ckpt-missing", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/nope.ckpt"),
         r"--ckpt_path '.*nope\.ckpt' does not exist"),
    Case("fit-ckpt-remote", fit("shapes-infonce.yaml", "--ckpt_path=http://127.0.0.1:9/evil.ckpt"),
         r"--ckpt_path 'http://127\.0\.0\.1:9/evil\.ckpt' is a remote address"),
    Case("fit-ckpt-pickled", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/evil.ckpt"),
         r"--ckpt_path '.*evil\.ckpt' holds pickled code \(pathlib\.PosixPath\)"),
    Case("fit-student-init-missing", fit("shapes-infonce.yaml", "--model.init_args.student_init={tmp}/nope.ckpt"),
         r"model\.init_args\.student_init '.*nope\.ckpt' does not exist"),
    Case("fit-student-init-truncated", fit("shapes-infonce.yaml", "--model.init_args.student_init={tmp}/cut.ckpt"),
         r"model\.init_args\.student_init '.*cut\.ckpt' is damaged or not a PyTorch checkpoint"),
    Case("fit-student-init-empty-folder", fit("shapes-infonce.yaml", "--model.init_args.student_init={tmp}"),
         r"model\.init_args\.student_init '.*' is a folder without model\.safetensors"),
    Case("fit-student-init-cut-export", fit("shapes-infonce.yaml", "--model.init_args.student_init={tmp}/export"),
         r"model\.init_args\.student_init '.*export/model\.safetensors' is damaged or not a safetensors file"),
    # ---------------------------------------------------------------- fit: teacher weights
    Case("fit-teacher-folder-missing", fit("shapes-kl.yaml", "--model.init_args.teacher.init_args.weights={tmp}/nope"),
         r"teacher weights folder '.*nope' has no config\.json \+ model\.safetensors"),
    Case("fit-teacher-truncated", fit("shapes-kl.yaml", "--model.init_args.teacher.init_args.weights={tmp}/teacher"),
         r"teacher weights '.*model\.safetensors' is damaged or not a safetensors file"),
    Case("fit-teacher-not-safetensors", fit("shapes-kl.yaml",
                                            "--model.init_args.teacher.init_args.weights={tmp}/teacher"),
         r"teacher weights '.*model\.safetensors' is damaged or not a safetensors file"),
    Case("fit-teacher-config-broken", fit("shapes-kl.yaml",
                                          "--model.init_args.teacher.init_args.weights={tmp}/teacher"),
         r"'.*teacher/config\.json' is not valid JSON"),
    # ---------------------------------------------------------------- fit: recipe values
    Case("fit-recipe-missing", command("fit", "--config", "{tmp}/nope.yaml"), r"nope\.yaml"),
    Case("fit-recipe-bad-yaml", command("fit", "--config", "{tmp}/bad.yaml"), r"bad\.yaml"),
    Case("fit-unknown-key", fit("shapes-infonce.yaml", "--model.init_args.num_hard_negativez=3"),
         r"num_hard_negativez"),
    Case("fit-zero-hard-negatives", fit("shapes-infonce.yaml", "--model.init_args.num_hard_negatives=0"),
         r"num_hard_negatives must be >= 1, got 0"),
    Case("fit-negative-loss-weight", fit("shapes-kl.yaml", "--model.init_args.loss_weights.kl=-1"),
         r"model\.init_args\.loss_weights\.kl must be a finite number >= 0, got -1"),
    Case("fit-unknown-loss-weight", fit("shapes-infonce.yaml", "--model.init_args.loss_weights={{\"klx\": 1}}"),
         r"loss_weights names \['klx'\]"),
    Case("fit-unknown-loss-class", fit("shapes-infonce.yaml",
                                       "--model.init_args.losses.infonce.class_path=distill.losses.NoSuchLoss"),
         r"NoSuchLoss"),
    Case("fit-hard-negatives-without-extras", fit("shapes-infonce.yaml",
                                                  "--model.init_args.losses.infonce.init_args.hard_negatives=true"),
         r"InfoNCE\(hard_negatives: true\) ranks the step's extra passages, but this step has none: use "
         r"model\.init_args\.candidates that add them"),
    Case("fit-zero-kl-temperature", fit("shapes-kl.yaml",
                                        "--model.init_args.losses.kl.init_args.student_temperature=0"),
         r"student_temperature must be a finite number > 0, got 0"),
    Case("fit-zero-teacher-max-pairs", fit("shapes-kl.yaml", "--model.init_args.teacher_max_pairs=0"),
         r"teacher_max_pairs must be >= 1 or null, got 0"),
    Case("fit-bad-teacher-precision", fit("shapes-kl.yaml", "--model.init_args.teacher_precision=fp8"),
         r"model\.init_args\.teacher_precision must be one of 32, bf16, 16, got 'fp8'"),
    Case("fit-zero-queue", fit("shapes-kl.yaml",
                               "--model.init_args.candidates=distill.training.candidates.MemoryQueue",
                               "--model.init_args.candidates.init_args.size=0"),
         r"MemoryQueue size must be >= 1, got 0"),
    Case("fit-cache-missing", fit("shapes-kl.yaml",
                                  "--model.init_args.candidates=distill.training.candidates.CachedCandidates",
                                  "--model.init_args.candidates.init_args.path={tmp}/no-cache"),
         r"teacher cache '.*no-cache' has no manifest\.json"),
    Case("fit-negative-two-stage", fit("shapes-infonce.yaml", "--model.init_args.evaluator.init_args.two_stage_k=-1"),
         r"model\.init_args\.evaluator\.init_args\.two_stage_k must be >= 0, got -1"),
    Case("fit-bad-embedding-dtype", fit("shapes-infonce.yaml",
                                        "--model.init_args.evaluator.init_args.embedding_dtype=int8"),
         r"embedding_dtype must be one of \['float16', 'float32'\], got 'int8'"),
    Case("fit-unknown-timm-model", fit("shapes-infonce.yaml",
                                       "--model.init_args.student.init_args.tower_a.init_args.model_name=resnet999"),
         r"timm could not build image tower 'resnet999' \(Unknown model \(resnet999\)\)"),
    Case("fit-bad-precision", fit("shapes-infonce.yaml", "--trainer.precision=bogus"),
         r"trainer\.precision: .*\(given: bogus\)"),
    Case("fit-bad-val-interval", fit("shapes-infonce.yaml", "--trainer.val_check_interval=1.5"),
         r"1\.5 for val_check_interval"),
    Case("fit-read-only-output", fit("shapes-infonce.yaml", "--trainer.default_root_dir={tmp}/ro/run"),
         r"permission denied: '.*ro.*'"),
    Case("validate-ckpt-missing", command("validate", "--config", str(DEMO / "shapes-infonce.yaml"),
                                          "--ckpt_path={tmp}/nope.ckpt"),
         r"--ckpt_path '.*nope\.ckpt' does not exist"),
    # ---------------------------------------------------------------- fit: image-text files
    Case("paired-annotations-missing",
         fit("shapes-infonce.yaml", "--data=distill.data.PairedImageTextDataModule",
             "--data.init_args.annotations={tmp}/nope.json", "--data.init_args.image_root={assets.images[image_root]}",
             "--data.init_args.student_tokenizer={assets.tokenizer}"),
         r"data\.init_args\.annotations: file '.*nope\.json' not found"),
    Case("paired-tokenizer-missing",
         fit("shapes-infonce.yaml", "--data=distill.data.PairedImageTextDataModule",
             "--data.init_args.annotations={assets.images[karpathy]}",
             "--data.init_args.image_root={assets.images[image_root]}",
             "--data.init_args.student_tokenizer={tmp}/no-tokenizer"),
         r"data\.init_args\.student_tokenizer='.*no-tokenizer'"),
    # ---------------------------------------------------------------- fit: BEIR files
    Case("beir-data-dir-missing",
         command("fit", "--config", str(MSMARCO), "--trainer.fast_dev_run=true", "--data.init_args.data_dir={tmp}/nope",
                 "--data.init_args.teacher_tokenizer=null", "--model.init_args.teacher=null",
                 "--model.init_args.losses={{\"infonce\": {{\"class_path\": \"distill.losses.InfoNCE\"}}}}",
                 "--model.init_args.loss_weights={{}}"),
         r"'.*nope/corpus\.jsonl' not found: data\.init_args\.data_dir must hold corpus\.jsonl"),
    Case("beir-train-file-missing",
         command("fit", "--config", str(MSMARCO), "--trainer.fast_dev_run=true",
                 "--data.init_args.data_dir={assets.beir}", "--data.init_args.train_file=nope.jsonl",
                 "--data.init_args.teacher_tokenizer=null", "--model.init_args.teacher=null",
                 "--model.init_args.losses={{\"infonce\": {{\"class_path\": \"distill.losses.InfoNCE\"}}}}",
                 "--model.init_args.loss_weights={{}}"),
         r"data\.init_args\.train_file: '.*nope\.jsonl' not found"),
    # ---------------------------------------------------------------- export
    Case("export-ckpt-missing", command("export", "--ckpt", "{tmp}/nope.ckpt", "--out", "{tmp}/out"),
         r"no config\.yaml found next to or above '.*nope\.ckpt'"),
    Case("export-ckpt-truncated", command("export", "--ckpt", "{tmp}/cut.ckpt", "--out", "{tmp}/out",
                                          "--config", str(DEMO / "shapes-kl.yaml")),
         r"--ckpt '.*cut\.ckpt' is damaged or not a PyTorch checkpoint"),
    Case("export-ckpt-pickled", command("export", "--ckpt", "{tmp}/evil.ckpt", "--out", "{tmp}/out",
                                        "--config", str(DEMO / "shapes-kl.yaml")),
         r"--ckpt '.*evil\.ckpt' holds pickled code \(pathlib\.PosixPath\)"),
    Case("export-bad-opset-keeps-export", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/export",
                                                  "--opset", "99"),
         r"opset", status=2, kept=lambda a, t: [t / "export"]),
    Case("export-opset-too-old", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/out", "--opset", "13"),
         r"opset 13 is not supported: choose 14 to 20"),
    Case("export-metrics-not-object", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/out",
                                              "--metrics", "{tmp}/metrics.json"),
         r"--metrics '.*metrics\.json' must hold a JSON object"),
    Case("export-zero-top-k", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/out", "--top-k-a", "0"),
         r"argument --top-k-a: expected an integer >= 1, got 0"),
    Case("export-read-only-out", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/ro/out", "--no-onnx"),
         r"cannot write the export folder '.*ro/out': permission denied"),
    Case("export-missing-argument", command("export", "--out", "{tmp}/out"),
         r"distill export: the following arguments are required: --ckpt"),
    # ---------------------------------------------------------------- index
    Case("index-not-an-export", command("index", "--student", "{tmp}", "--data", "{assets.data_yaml}",
                                        "--out", "{tmp}/idx"),
         r"'.*' is not a student export: it has no student_config\.json"),
    Case("index-data-missing", command("index", "--student", "{assets.export}", "--data", "{tmp}/nope.yaml",
                                       "--out", "{tmp}/idx"),
         r"data file '.*nope\.yaml' does not exist"),
    Case("index-dense-uint8", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                      "--out", "{tmp}/idx", "--weights", "uint8"),
         r"is a dense student: --weights and --top-k apply to sparse students"),
    Case("index-zero-chunk", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                     "--out", "{tmp}/idx", "--chunk-size", "0"),
         r"--chunk-size: expected an integer >= 1, got 0"),
    Case("index-read-only-out", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                        "--out", "{tmp}/ro/idx", "--no-progress"),
         r"cannot write the index folder '.*ro/idx': permission denied"),
    Case("index-cut-export", command("index", "--student", "{tmp}/export", "--data", "{assets.data_yaml}",
                                     "--out", "{tmp}/idx", "--no-progress"),
         r"model\.safetensors' is damaged or not a safetensors file"),
    # ---------------------------------------------------------------- search
    Case("search-empty-query", command("search", "--index", "{assets.index}", "--query", ""),
         r"--query is empty"),
    Case("search-whitespace-query", command("search", "--index", "{assets.index}", "--query", "   "),
         r"--query is empty"),
    Case("search-not-an-image", command("search", "--index", "{assets.index}", "--image", "{tmp}/query.png"),
         r"--image '.*query\.png' is not an image"),
    Case("search-image-missing", command("search", "--index", "{assets.index}", "--image", "{tmp}/nope.png"),
         r"--image '.*nope\.png' does not exist"),
    Case("search-truncated-index", command("search", "--index", "{tmp}/index", "--query", "a red circle"),
         r"index file '.*dense\.npy' does not match its manifest"),
    Case("search-mixed-index", command("search", "--index", "{tmp}/index", "--query", "a red circle"),
         r"index file '.*items\.jsonl' does not match its manifest"),
    Case("search-other-student", command("search", "--index", "{assets.index}", "--query", "a red circle",
                                         "--student", "{tmp}/export"),
         r"was built with another student than '.*export'"),
    Case("search-zero-k", command("search", "--index", "{assets.index}", "--query", "a", "-k", "0"),
         r"expected an integer >= 1, got 0"),
    Case("search-other-backend", command("search", "--index", "{assets.index}", "--query", "a red circle",
                                         "--backend", "faiss"),
         r"--backend faiss: index '.*index' was built with --backend numpy"),
    Case("index-qdrant-url-no-answer", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                               "--out", "{tmp}/idx", "--backend", "qdrant", "--url",
                                               "http://127.0.0.1:9"),
         r"--url http://127\.0\.0\.1:9 does not answer"),
    Case("index-pq-on-exact-faiss", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                            "--out", "{tmp}/idx", "--backend", "faiss", "--faiss-type", "flat",
                                            "--pq", "8"),
         r"--pq compresses an approximate index: add --faiss-type ivf or hnsw"),
    Case("index-faiss-flags-on-numpy", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                               "--out", "{tmp}/idx", "--backend", "numpy", "--nlist", "8"),
         r"--faiss-type, --nlist and --pq apply to --backend faiss, not numpy"),
    Case("search-no-index", command("search", "--index", "{tmp}/nope", "--query", "a red circle"),
         r"'.*nope' is not an index"),
    # ---------------------------------------------------------------- cache-teacher
    Case("cache-student-ckpt-missing",
         command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"), "--out", "{tmp}/cache",
                 "--student-ckpt", "{tmp}/nope.ckpt", *TINY[:6],
                 "--model.init_args.teacher.init_args.weights={assets.teacher}"),
         r"--student-ckpt '.*nope\.ckpt' does not exist"),
    Case("cache-student-ckpt-truncated",
         command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"), "--out", "{tmp}/cache",
                 "--student-ckpt", "{tmp}/cut.ckpt", *TINY[:6],
                 "--model.init_args.teacher.init_args.weights={assets.teacher}"),
         r"--student-ckpt '.*cut\.ckpt' is damaged or not a PyTorch checkpoint"),
    Case("cache-config-missing", command("cache-teacher", "--config", "{tmp}/nope.yaml", "--out", "{tmp}/c"),
         r"--config: recipe '.*nope\.yaml' does not exist"),
    Case("cache-zero-k", command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"), "--k", "0"),
         r"--k: expected an integer >= 1, got 0"),
    Case("cache-rank-outside", command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"),
                                       "--out", "{tmp}/cache", "--rank", "3", "--world-size", "2", *TINY[:6],
                                       "--model.init_args.teacher.init_args.weights={assets.teacher}"),
         r"--rank must be in \[0, 2\), got 3"),
    Case("cache-no-teacher", command("cache-teacher", "--config", str(DEMO / "shapes-infonce.yaml"),
                                     "--out", "{tmp}/cache", *TINY[:6]),
         r"needs model\.init_args\.student and model\.init_args\.teacher"),
    # ---------------------------------------------------------------- mine, demo, the entry
    Case("mine-image-text-recipe", command("mine", "--config", str(DEMO / "shapes-infonce.yaml"),
                                           "--out", "{tmp}/train.jsonl", *TINY[:6]),
         r"mining needs a BEIR text data module, not ShapesDataModule"),
    Case("demo-no-recipes", command("demo", "--configs", "{tmp}/nope"), r"no demo recipes in '.*nope'"),
    Case("unknown-option", command("index", "--student", "x", "--data", "y", "--out", "z", "--frobnicate"),
         r"unrecognized arguments: --frobnicate"),
    # ---------------------------------------------------------------- outputs: only what distill wrote is replaced
    Case("export-out-user-folder", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/mine", "--no-onnx"),
         r"--out '.*mine' is a folder distill did not write \(it holds 'notes\.txt'\): distill replaces only export "
         r"folders it wrote", kept=lambda a, t: [t / "mine"]),
    Case("export-out-index", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/index", "--no-onnx"),
         r"--out '.*index' is a distill index folder: this command writes export folders",
         kept=lambda a, t: [t / "index"]),
    Case("export-out-file", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/notes.txt", "--no-onnx"),
         r"--out '.*notes\.txt' is a file, not an export folder distill wrote", kept=lambda a, t: [t / "notes.txt"]),
    Case("export-out-fifo", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/fifo", "--no-onnx"),
         r"--out '.*fifo' is a FIFO \(named pipe\), not an export folder"),
    Case("export-out-symlink", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/link", "--no-onnx"),
         r"--out '.*link' is a symbolic link \(to '.*mine'\): distill does not write through links",
         kept=lambda a, t: [t / "mine"]),
    Case("export-out-under-file", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/notes.txt/out",
                                          "--no-onnx"),
         r"--out '.*notes\.txt/out' is under '.*notes\.txt', which is not a folder",
         kept=lambda a, t: [t / "notes.txt"]),
    Case("export-out-dotdot", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/mine/..", "--no-onnx"),
         r"--out '.*mine/\.\.' does not name a new export folder", kept=lambda a, t: [t / "mine"]),
    Case("export-out-holds-ckpt", command("export", "--ckpt", "{tmp}/run/last.ckpt", "--out", "{tmp}/run",
                                          "--config", str(DEMO / "shapes-kl.yaml"), "--no-onnx"),
         r"--out '.*run' holds the command's own --ckpt '.*last\.ckpt'", kept=lambda a, t: [t / "run"]),
    Case("index-out-is-student", command("index", "--student", "{tmp}/export", "--data", "{assets.data_yaml}",
                                         "--out", "{tmp}/export", "--no-progress"),
         r"--out '.*export' is the command's own --student", kept=lambda a, t: [t / "export"]),
    Case("index-out-holds-student", command("index", "--student", "{tmp}/work/export", "--data", "{assets.data_yaml}",
                                            "--out", "{tmp}/work", "--no-progress"),
         r"--out '.*work' holds the command's own --student '.*work/export'", kept=lambda a, t: [t / "work"]),
    Case("index-out-export", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                     "--out", "{tmp}/export", "--no-progress"),
         r"--out '.*export' is a distill export folder: this command writes index folders",
         kept=lambda a, t: [t / "export"]),
    Case("index-out-device", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                     "--out", os.devnull, "--no-progress"),
         r"--out '/dev/null' is a character device, not an index folder"),
    Case("index-out-foreign-file", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                           "--out", "{tmp}/index", "--no-progress"),
         r"--out '.*index' is an index folder distill wrote, but 'notes\.txt' in it is not",
         kept=lambda a, t: [t / "index"]),
    Case("mine-out-fifo", command("mine", "--config", str(MSMARCO), "--out", "{tmp}/fifo"),
         r"--out '.*fifo' is a FIFO \(named pipe\), not a training file"),
    Case("mine-out-not-mined", command("mine", "--config", str(MSMARCO), "--out", "{tmp}/notes.txt"),
         r"--out '.*notes\.txt' exists and is not a training file distill wrote", kept=lambda a, t: [t / "notes.txt"]),
    Case("cache-out-user-folder", command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"),
                                          "--out", "{tmp}/mine"),
         r"--out '.*mine' is a folder distill did not write \(it holds 'notes\.txt'\): distill replaces only teacher "
         r"cache folders it wrote", kept=lambda a, t: [t / "mine"]),
    Case("cache-out-export", command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"),
                                     "--out", "{tmp}/export"),
         r"--out '.*export' is a distill export folder: this command writes teacher cache folders",
         kept=lambda a, t: [t / "export"]),
    # ---------------------------------------------------------------- artefacts are data: no code they name runs
    Case("index-student-trust-remote-code", command("index", "--student", "{tmp}/export", "--data",
                                                    "{assets.data_yaml}", "--out", "{tmp}/idx", "--no-progress"),
         r"'.*export/student_config\.json' sets student\.init_args\.trust_remote_code = True, code that loading it "
         r"would run; .*pass --trust-remote-code only if you trust", kept=lambda a, t: [t / "export"]),
    Case("index-student-foreign-class", command("index", "--student", "{tmp}/export", "--data", "{assets.data_yaml}",
                                                "--out", "{tmp}/idx", "--no-progress"),
         r"'.*export/student_config\.json' sets student\.class_path = 'os_tools\.Student', code that loading it "
         r"would run", kept=lambda a, t: [t / "export"]),
    Case("search-student-auto-map", command("search", "--index", "{tmp}/index", "--query", "a red circle"),
         r"'.*export/tokenizer_config\.json' sets auto_map = \['evil_tokenizer\.Tokenizer'\], code that loading it "
         r"would run", kept=lambda a, t: [t / "export", t / "index"]),
    # ---------------------------------------------------------------- settings Lightning or torch would reject
    Case("fit-negative-warmup", fit("shapes-infonce.yaml", "--model.init_args.lr_scheduler.init_args.warmup_steps=-10"),
         r"model\.init_args\.lr_scheduler: warmup_steps must be >= 0, got -10"),
    Case("fit-negative-lr", fit("shapes-infonce.yaml", "--model.init_args.optimizer.init_args.lr=-1"),
         r"model\.init_args\.optimizer: Invalid learning rate: -1"),
    Case("fit-negative-max-steps", fit("shapes-infonce.yaml", "--trainer.max_steps=-5"),
         r"trainer\.max_steps must be an integer >= 0 or -1, got -5"),
    Case("fit-zero-max-epochs", fit("shapes-infonce.yaml", "--trainer.max_epochs=0", "--trainer.max_steps=-1"),
         r"trainer\.max_epochs=0 trains nothing"),
    Case("fit-zero-accumulate", fit("shapes-infonce.yaml", "--trainer.accumulate_grad_batches=0"),
         r"trainer\.accumulate_grad_batches must be an integer >= 1, got 0"),
    Case("fit-gpu-without-one", fit("shapes-infonce.yaml", "--trainer.accelerator=gpu", "--trainer.devices=64"),
         r"trainer\.(accelerator=gpu but this machine has no CUDA GPU|devices=64 but this machine has \d+ CUDA)"),
    Case("fit-env-world-size", fit("shapes-infonce.yaml"),
         r"environment variable WORLD_SIZE='abc' must be an integer >= 1: unset it"),
    Case("fit-env-local-rank", fit("shapes-infonce.yaml"),
         r"environment variable LOCAL_RANK='x' must be an integer >= 0"),
    Case("cache-env-rank", command("cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"), "--out", "{tmp}/cache"),
         r"environment variable RANK=2 must be below WORLD_SIZE=2"),
    Case("export-huge-image-size", command("export", "--ckpt", "{assets.ckpt}", "--out", "{tmp}/out",
                                           "--image-size", "100000"),
         r"--image-size: expected at most 4096 pixels, got 100000"),
    Case("index-unknown-split", command("index", "--student", "{assets.export}", "--data", "{assets.data_yaml}",
                                        "--out", "{tmp}/idx", "--split", "bogus"),
         r"--split bogus: ShapesDataModule: unknown split 'bogus'"),
    Case("search-rerank-missing", command("search", "--index", "{assets.index}", "--image", "{tmp}/red.png",
                                          "--rerank-with", "{tmp}/nope"),
         r"--rerank-with: teacher weights folder '.*nope' has no config\.json"),
    Case("fit-listed-negatives-without-ids",
         fit("shapes-kl.yaml", "--model.init_args.candidates=distill.training.candidates.ListedNegatives",
             "--data.init_args.binding_negatives=true"),
         r"model\.init_args\.candidates: ListedNegatives reads .*b_neg_id.*ShapesDataModule does not give"),
    # ---------------------------------------------------------------- recipes parsed safely
    Case("fit-recipe-alias-bomb", command("fit", "--config", "{tmp}/bomb.yaml"),
         r"--config: recipe '.*bomb\.yaml' is refused: its aliases expand to more than 1,000,000 values"),
    Case("fit-recipe-recursive-alias", command("fit", "--config", "{tmp}/recipe.yaml"),
         r"'.*loop\.yaml' \(composed by '.*recipe\.yaml'\) is refused: an alias refers to a node that contains it"),
    Case("fit-recipe-deep-nesting", command("fit", "--config", "{tmp}/deep.yaml"),
         r"--config: recipe '.*deep\.yaml' is refused: its collections are nested deeper than the parser can follow"),
    # ---------------------------------------------------------------- values checked where they enter
    Case("fit-ckpt-runs-code", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/code.ckpt"),
         r"--ckpt_path '.*code\.ckpt' holds pickled code \((posix|nt|os)\.system\)"),
    Case("fit-ckpt-nan-weights", fit("shapes-infonce.yaml", "--ckpt_path={tmp}/nan.ckpt"),
         r"--ckpt_path '.*nan\.ckpt': tensor 'student\.logit_scale' holds NaN or infinite values"),
    Case("search-nan-index", command("search", "--index", "{tmp}/index", "--query", "a red circle"),
         r"index file '.*dense\.npy': embeddings row 2 holds NaN or infinite values"),
    Case("search-emptied-manifest", command("search", "--index", "{tmp}/index", "--query", "a red circle"),
         r"index manifest '.*index\.json' does not list \['dense\.json', 'dense\.npy', 'items\.jsonl', 'items\.npy'\]"),
    Case("search-zero-width-query", command("search", "--index", "{assets.index}", "--query", "\u200b\u200b"),
         r"--query '\\u200b\\u200b' has no token the student knows"),
    Case("search-emoji-query", command("search", "--index", "{assets.index}", "--query", "\U0001f600\U0001f600"),
         r"--query '\\U0001f600\\U0001f600' has no token the student knows"),
    Case("search-control-query", command("search", "--index", "{assets.index}", "--query", "\x01\x02"),
         r"--query '\\x01\\x02' has no token the student knows"),
    Case("beir-conflicting-qrels",
         command("fit", "--config", str(MSMARCO), "--trainer.fast_dev_run=true", "--data.init_args.data_dir={tmp}/beir",
                 "--data.init_args.teacher_tokenizer=null", "--model.init_args.teacher=null",
                 "--model.init_args.losses={{\"infonce\": {{\"class_path\": \"distill.losses.InfoNCE\"}}}}",
                 "--model.init_args.loss_weights={{}}"),
         r"qrels/\w+\.tsv': line \d+ grades query '\w+', passage '\w+' 2, line \d+ graded it 1: keep one judgment"),
]


def _user_files(assets: Assets, tmp: Path) -> None:
    """A user's folder with a note, a file, a FIFO and a link to the folder."""
    _write(tmp / "mine" / "notes.txt", b"my notes")
    _write(tmp / "notes.txt", b"my notes")
    os.mkfifo(tmp / "fifo")
    (tmp / "link").symlink_to(tmp / "mine")


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


def _crafted_export(edit: Callable[[dict], None]) -> Callable[[Assets, Path], None]:
    return lambda a, t: (a.copy("export", t / "export"), _edit_json(t / "export" / "student_config.json", edit))


def _index_of_auto_map_export(assets: Assets, tmp: Path) -> None:
    """An index whose student is a copy of the export with an auto_map in its tokenizer config."""
    assets.copy("export", tmp / "export")
    _edit_json(tmp / "export" / "tokenizer_config.json",
               lambda config: config.update(auto_map={"AutoTokenizer": ["evil_tokenizer.Tokenizer", None]}))
    assets.copy("index", tmp / "index")
    _edit_json(tmp / "index" / "index.json", lambda meta: meta.update(student=str(tmp / "export")))


OUTPUT_CASES: dict[str, Callable[[Assets, Path], object]] = {  # every case of the two blocks above: its files
    **{name: lambda a, t: None for name in ("export-out-user-folder", "export-out-file", "export-out-fifo",
                                             "export-out-symlink", "export-out-under-file", "export-out-dotdot",
                                             "index-out-device", "mine-out-fifo", "mine-out-not-mined",
                                             "cache-out-user-folder")},
    "export-out-index": lambda a, t: a.copy("index", t / "index"),
    "export-out-holds-ckpt": lambda a, t: _write(t / "run" / "last.ckpt", a.ckpt.read_bytes()),
    "index-out-is-student": lambda a, t: a.copy("export", t / "export"),
    "index-out-holds-student": lambda a, t: a.copy("export", t / "work" / "export"),
    "index-out-export": lambda a, t: a.copy("export", t / "export"),
    "index-out-foreign-file": lambda a, t: (a.copy("index", t / "index"), _write(t / "index" / "notes.txt", b"mine")),
    "cache-out-export": lambda a, t: a.copy("export", t / "export"),
    "index-student-trust-remote-code": _crafted_export(
        lambda config: config["student"]["init_args"].update(trust_remote_code=True)),
    "index-student-foreign-class": _crafted_export(
        lambda config: config["student"].update(class_path="os_tools.Student")),
    "search-student-auto-map": _index_of_auto_map_export,
}


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __reduce__(self) -> tuple:
        return os.system, ("echo unpickled",)


def _alias_bomb(levels: int = 9) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _nan_checkpoint(assets: Assets, tmp: Path) -> None:
    checkpoint = torch.load(assets.ckpt, weights_only=True)
    checkpoint["state_dict"]["student.logit_scale"] = torch.tensor(float("nan"))
    torch.save(checkpoint, tmp / "nan.ckpt")


def _nan_index(assets: Assets, tmp: Path) -> None:
    """A copy of the index with a NaN row, its manifest's hashes updated: it passes the hash check."""
    import numpy as np

    from distill.io import folder_manifest

    folder = assets.copy("index", tmp / "index")
    vectors = np.load(folder / "dense.npy")
    vectors[2, 0] = np.nan
    np.save(folder / "dense.npy", vectors)
    _edit_json(folder / "index.json", lambda meta: meta.update(files=folder_manifest(folder, exclude=("index.json",))))


def _conflicting_qrels(assets: Assets, tmp: Path) -> None:
    folder = assets.copy("beir", tmp / "beir")
    for split in ("train", "dev", "test"):
        path = folder / "qrels" / f"{split}.tsv"
        first = path.read_text().splitlines()[1].split("\t")
        path.write_text(path.read_text() + f"{first[0]}\t{first[1]}\t2\n")


def _red_image(assets: Assets, tmp: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp / "red.png")


VALUE_CASES: dict[str, Callable[[Assets, Path], object]] = {  # the files of the settings and values block
    "search-rerank-missing": _red_image,
    "fit-recipe-alias-bomb": lambda a, t: _write(t / "bomb.yaml", _alias_bomb().encode()),
    "fit-recipe-recursive-alias": lambda a, t: (_write(t / "loop.yaml", b"a: &a [1, {b: *a}]\n"),
                                                _write(t / "recipe.yaml", b"seed_everything: 0\ntrainer: loop.yaml\n")),
    "fit-recipe-deep-nesting": lambda a, t: _write(t / "deep.yaml", ("a: " + "[" * 50_000 + "]" * 50_000).encode()),
    "fit-ckpt-runs-code": lambda a, t: torch.save({"state_dict": {}, "payload": _RunsCode()}, t / "code.ckpt"),
    "fit-ckpt-nan-weights": _nan_checkpoint,
    "search-nan-index": _nan_index,
    "search-emptied-manifest": lambda a, t: (a.copy("index", t / "index"),
                                             _edit_json(t / "index" / "index.json", lambda m: m.update(files={}))),
    "beir-conflicting-qrels": _conflicting_qrels,
}
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "fit-env-world-size": {"WORLD_SIZE": "abc"},
    "fit-env-local-rank": {"LOCAL_RANK": "x"},
    "cache-env-rank": {"RANK": "2", "WORLD_SIZE": "2"},
}


def _digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            out[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def _prepare(case: Case, assets: Assets, tmp: Path) -> None:
    if case.id in OUTPUT_CASES:
        _user_files(assets, tmp)
        OUTPUT_CASES[case.id](assets, tmp)
    if case.id in VALUE_CASES:
        VALUE_CASES[case.id](assets, tmp)
    for key, build in PREPARE.items():
        needed = {"truncated-ckpt": "cut.ckpt", "empty-ckpt": "empty.ckpt", "dict-ckpt": "dict.ckpt",
                  "pickled-ckpt": "evil.ckpt", "bad-yaml": "bad.yaml", "not-an-image": "query.png",
                  "metrics-list": "metrics.json", "read-only": "/ro"}
        if key in needed and needed[key] in " ".join(case.args(assets, tmp)):
            build(assets, tmp)
    if case.id in ("fit-teacher-truncated",):
        PREPARE["cut-teacher"](assets, tmp)
    if case.id == "fit-teacher-not-safetensors":
        PREPARE["garbage-teacher"](assets, tmp)
    if case.id == "fit-teacher-config-broken":
        PREPARE["broken-teacher-config"](assets, tmp)
    if case.id in ("fit-student-init-cut-export", "index-cut-export"):
        PREPARE["cut-export"](assets, tmp)
    if case.id == "search-truncated-index":
        PREPARE["cut-index"](assets, tmp)
    if case.id == "search-mixed-index":
        PREPARE["mixed-index"](assets, tmp)
    if case.id == "search-other-student":
        assets.copy("export", tmp / "export")
        (tmp / "export" / "model.safetensors").write_bytes((tmp / "export" / "model.safetensors").read_bytes()[:-4]
                                                          + b"\0\0\0\0")
    if case.id == "export-bad-opset-keeps-export":
        assets.copy("export", tmp / "export")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line(case: Case, assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in ENVIRONMENTS.get(case.id, {}).items():
        monkeypatch.setenv(name, value)
    _prepare(case, assets, tmp_path)
    kept = case.kept(assets, tmp_path) if case.kept else []
    before = _digest(kept)
    args = case.args(assets, tmp_path)
    out = Path(args[args.index("--out") + 1]) if "--out" in args[:-1] else None
    out_was_there = out is not None and out.exists()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    finally:
        writable_again(tmp_path / "ro")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert exit_info.value.code == case.status, lines[0]
    assert re.search(case.pattern, lines[0]), lines[0]
    assert _digest(kept) == before
    if out is not None and not out_was_there:  # a refused command writes nothing where its output would go
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), sorted(out.parent.iterdir())
    record = os.environ.get("DISTILL_RECORD_BAD_INPUTS")  # docs/troubleshooting.md quotes these lines
    if record:
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(f"{case.id}\t{exit_info.value.code}\t{lines[0]}\n")


def test_every_case_is_documented() -> None:
    text = TROUBLESHOOTING.read_text()
    missing = [case.id for case in CASES if f"`{case.id}`" not in text]
    assert not missing, missing


def test_cases_cover_every_command() -> None:
    commands = {case.id.split("-")[0] for case in CASES}
    assert {"fit", "validate", "paired", "beir", "export", "index", "search", "cache", "mine", "demo"} <= commands


@pytest.mark.slow
# The resumed run writes into the checkpoint folder of the run it resumes (on purpose).
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_last_checkpoint(
        assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`disk-full-checkpoint`: the save that runs out of space fails in one line (exit 1, a failure at run time,
    not bad input) and the checkpoint written before it stays complete and loadable."""
    import errno

    import distill.training.checkpoint as checkpoint

    run = tmp_path / "run"
    args = fit("shapes-infonce.yaml")(assets, tmp_path) + ["--trainer.max_steps=4", "--trainer.max_epochs=4",
                                                            "--data.init_args.num_train=8"]
    main([*args, f"--trainer.default_root_dir={run}", "--trainer.max_steps=2"])
    last = next(run.rglob("last.ckpt"))
    before = last.read_bytes()

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(last))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"--trainer.default_root_dir={run}", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert exit_info.value.code == 1 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"distill: error: no space left on the device while writing '{last}'")
    assert last.read_bytes() == before
    torch.load(last, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("command_name", ["export", "index", "cache-teacher"])
def test_a_full_disk_is_one_line_for_every_writer(command_name: str, assets: Assets, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`disk-full-export`, `disk-full-index`, `disk-full-cache-teacher`: the disk fills while the output is written,
    however the writer reports it (a bare ``OSError`` from ``fsync``, safetensors' own words); one line naming the
    output, exit 1, and an output folder written before is left as it was."""
    import errno

    import safetensors.torch

    import distill.io

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_in_rust(*_: object, **__: object) -> None:
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    out = tmp_path / "out"
    args = {
        "export": ["export", "--ckpt", str(assets.ckpt), "--out", str(out), "--no-onnx"],
        "index": ["index", "--student", str(assets.export), "--data", str(assets.data_yaml), "--out", str(out),
                  "--no-progress", "--backend", "numpy"],
        "cache-teacher": ["cache-teacher", "--config", str(DEMO / "shapes-cprd.yaml"), "--out", str(out), *TINY[:6],
                          f"--model.init_args.teacher.init_args.weights={assets.teacher}"],
    }[command_name]
    if command_name != "cache-teacher":
        assets.copy(command_name, out)  # the output of an earlier run, which must survive
    before = _digest([out]) if out.exists() else None
    if command_name == "export":  # the weights are the first large write; safetensors says "os error 28"
        monkeypatch.setattr(safetensors.torch, "save_model", full_disk_in_rust)
    else:
        monkeypatch.setattr(distill.io.os, "fsync", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert exit_info.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"distill: error: no space left on the device while writing '{out}"), lines[0]
    if before is not None:
        assert _digest([out]) == before
    assert not list(tmp_path.glob(".out.tmp-*"))  # no scratch folder left beside it

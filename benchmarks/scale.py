"""Scale simulation of the real recipes: host and device memory, and teacher cost, at full size.

    OMP_NUM_THREADS=1 python benchmarks/scale.py             # about an hour on a shared 2-core machine
    python benchmarks/scale.py --quick                        # tiny models and sizes, in one process (smoke test)
    python benchmarks/scale.py --device cuda                  # on a GPU: adds peak CUDA memory and throughput
    python benchmarks/scale.py --report-only                  # rewrite the section from the saved results

Nothing is downloaded. The real architectures are built from their configs with random weights: BLIP ITM
base (``BlipConfig()``, 384 px) and ViLT-B/32 (``ViltConfig()``) teachers, a CLIP ViT-B/32 student
(``CLIPConfig()``), a MiniLM-L6 cross-encoder teacher (BERT, 6 layers, 384 wide) and the real
all-MiniLM-L6-v2 student that ships with the project. They are saved once with ``save_pretrained`` and
loaded by the recipes themselves (``configs/coco``, ``configs/msmarco``), so batch sizes, K,
``teacher_max_pairs``, the evaluator's settings and the data modules are the recipes'. Inputs are
synthetic with real shapes: 640x480 JPEG photos with COCO-length captions (Karpathy JSON), and a BEIR
folder of MS MARCO-length passages.

Every measurement runs in its own process (``--quick``: in this one). Peak host memory is the kernel's
resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset by writing 5 to
``/proc/self/clear_refs`` before the measured block; ``ru_maxrss`` where that is not allowed); the
anonymous part (``RssAnon``, i.e. not file pages such as memory-mapped embeddings) is sampled every 10 ms.
Child processes run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that freed blocks go back to the system at
once and the resident set follows what the code holds. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on one real-shape forward. ``--device cuda`` runs the same
measurements on a GPU at the recipes' own batch sizes and K, with the teachers in the recipes' precision (this
path has not been run on a GPU yet). The measurements, and the
projections built from them with their formulas, go to stdout and to this script's section of
``docs/benchmarks.md`` (``--out``); the raw results to ``--results`` (JSON).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy / torch load their thread pools
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import copy
import gc
import json
import math
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DEFAULT_RESULTS = REPO / "runs" / "scale-results.json"
COCO_RECIPE = REPO / "configs" / "coco" / "blip-itm-to-clip-cprd.yaml"
FLICKR_RECIPE = REPO / "configs" / "flickr" / "vilt-to-timm-bert-dcd.yaml"
MSMARCO_RECIPE = REPO / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml"
DEMO_TEACHER = REPO / "artifacts" / "shapes-teacher"
RESULT_PREFIX = "SCALE-RESULT "
MiB = 2 ** 20

# Sizes of the real data sets the projections use (Karpathy splits; MS MARCO passage ranking).
COCO = dict(train_images=113_287, val_images=5_000, captions_per_image=5)
FLICKR = dict(train_images=29_000, captions_per_image=5)
MSMARCO = dict(passages=8_841_823, train_pairs=532_761)
INDEX_DIM = 384  # all-MiniLM-L6-v2's embedding width: the vectors `distill index` of MS MARCO holds


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Sizes:
    """What the simulation runs: real or tiny models, and the sizes measured."""

    tiny: bool = False
    val_images: tuple[int, ...] = (200, 400)  # real models and photos: ~100 s of CPU per 1,000 captions
    growth_images: tuple[int, ...] = (500, 1_000, 2_000)  # tiny towers, the real embedding width and dtype
    scale_images: tuple[int, ...] = (1_250, 2_500, 5_000)
    corpus: tuple[int, ...] = (100_000, 1_000_000)
    index: tuple[int, ...] = (20_000, 50_000, 100_000)  # `distill index`, streamed: passages per build
    index_vectors: tuple[int, ...] = (100_000, 200_000, 400_000)  # the FAISS build alone, synthetic D=384 vectors
    index_chunk: tuple[int, int] = (256, 256)  # the encoding chunk of the MiniLM measurement: passages, tokens
    queries: int = 1_000
    train_images: int = 16
    coco_step: tuple[int, int] = (8, 4)  # B, K of the CPU training step (the recipe's 64, 16 take ~15 min here)
    blip_images: tuple[int, ...] = (2, 4)
    blip_pairs: tuple[int, ...] = (4, 8)
    vilt_pairs: tuple[int, ...] = (2, 4)
    ce_pairs: tuple[int, ...] = (4, 8)
    clip_batch: tuple[int, ...] = (4, 8)
    minilm_batch: tuple[int, ...] = (4, 8)
    diagnostic_anchors: int = 2  # the recipe's 256 x K=16 BLIP pairs take ~30 min on this CPU
    skip: tuple[str, ...] = ()  # measurements left out (key prefixes)


FULL = Sizes()
QUICK = Sizes(tiny=True, val_images=(8,), growth_images=(8, 16), scale_images=(100, 200), corpus=(1_000, 2_000),
              index=(300, 600), index_vectors=(300, 600), index_chunk=(4, 32), queries=40, train_images=8, coco_step=(4, 2), blip_images=(1, 2), blip_pairs=(2, 4), vilt_pairs=(1, 2),
              ce_pairs=(2, 4), clip_batch=(2, 4), minilm_batch=(2, 4),
              skip=("chunks/vilt", "chunks/cross_encoder", "student/minilm", "train/msmarco", "validation/real",
                    "evaluator/val"))

# Shapes of one unit of work per architecture: image side in pixels, text lengths in tokens.
REAL_SHAPES = dict(blip_image=384, blip_text=35, vilt_canvas=640, vilt_image=(384, 512), vilt_text=40,
                   clip_image=224, clip_text=32, ce_query=32, ce_pair=256, minilm_query=32, minilm_passage=256,
                   small_encoder_width=64)
TINY_SHAPES = dict(blip_image=32, blip_text=12, vilt_canvas=64, vilt_image=(32, 64), vilt_text=12, clip_image=32,
                   clip_text=12, ce_query=8, ce_pair=32, minilm_query=8, minilm_passage=32, small_encoder_width=16)


def gpu_sizes(settings: Mapping[str, Mapping[str, Any]]) -> Sizes:
    """On a GPU: the recipes' own batch sizes, K and teacher pairs per forward, and the recipe's diagnostics; the
    measurements that use no device (evaluator, corpus, index) are left to the CPU run."""
    coco, flickr, marco = settings["coco"], settings["flickr"], settings["msmarco"]
    return Sizes(val_images=(800,), growth_images=(), diagnostic_anchors=256, coco_step=(coco["batch"], coco["k"]),
                 train_images=coco["batch"], corpus=(10_000,), skip=("evaluator/", "corpus/", "index"),
                 blip_images=(64, 256), blip_pairs=(coco["max_pairs"] // 2, coco["max_pairs"]),
                 vilt_pairs=(flickr["max_pairs"] // 2, flickr["max_pairs"]),
                 ce_pairs=(marco["max_pairs"] // 2, marco["max_pairs"]), clip_batch=(coco["batch"] // 2, coco["batch"]),
                 minilm_batch=(marco["batch"] // 2, marco["batch"]))


def recipe(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def recipe_settings() -> dict[str, dict[str, Any]]:
    """Batch sizes, K, teacher pairs per forward and evaluator settings, read from the recipes."""
    out = {}
    for name, path in (("coco", COCO_RECIPE), ("flickr", FLICKR_RECIPE), ("msmarco", MSMARCO_RECIPE)):
        raw = recipe(path)
        model, data = raw["model"]["init_args"], raw["data"]["init_args"]
        evaluator = model["evaluator"]["init_args"]
        out[name] = {"batch": data["batch_size"], "eval_batch": data["eval_batch_size"], "k": model["num_hard_negatives"],
                     "max_pairs": model["teacher_max_pairs"], "precision": str(model["teacher_precision"]),
                     "two_stage_k": evaluator.get("two_stage_k", 16), "dtype": evaluator.get("embedding_dtype"),
                     "workers": data.get("num_workers", 0), "negatives": data.get("num_negatives", 0)}
    return out


# ---------------------------------------------------------------------------------------------- memory
def _status(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes (0 when absent)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemoryProbe:
    """Peak host memory of a block: ``VmHWM`` (reset through ``clear_refs``) and sampled ``RssAnon``.

    ``reset()`` starts a new block; ``peak()`` / ``peak_anon()`` read its high-water marks. Where the kernel
    does not let the mark be reset, ``peak()`` is the process-wide ``ru_maxrss`` (``resettable`` is False).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.resettable = True
        self.start = 0
        self._anon_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryProbe:
        self.reset()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._anon_peak = max(self._anon_peak, _status("RssAnon"))

    @staticmethod
    def rss() -> int:
        return _status("VmRSS")

    def reset(self) -> None:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.resettable = False
        self.start = self.rss()
        self._anon_peak = _status("RssAnon")

    def peak(self) -> int:
        if self.resettable and _status("VmHWM"):
            return _status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_anon(self) -> int:
        return max(self._anon_peak, _status("RssAnon"))

    def block(self) -> dict[str, int]:
        """The current block's marks: ``start``, ``peak``, ``peak_anon`` (bytes)."""
        return {"start": self.start, "peak": self.peak(), "peak_anon": self.peak_anon()}


class Device:
    """CUDA peak memory and synchronised timing when ``name`` is a CUDA device; no-ops on the CPU."""

    def __init__(self, name: str) -> None:
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def touch(module: torch.nn.Module) -> None:
    """Read every weight once: weights loaded from safetensors are memory-mapped and become resident only when
    read, so a measurement that starts after this counts what the code allocates, not the weights paging in."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.sum()


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a (nested) batch."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------- synthetic data
SUBJECTS = ["a man", "a woman", "two people", "a young boy", "a little girl", "a brown dog", "a black cat",
            "a group of people", "a large bus", "a passenger train", "a giraffe", "an elephant", "a bird",
            "a plate of food", "a skier", "a tennis player", "a baseball player", "a red truck"]
ACTIONS = ["standing next to", "sitting on", "riding", "walking along", "holding", "looking at", "parked near",
           "eating", "flying over", "lying on", "playing with", "waiting at"]
OBJECTS = ["a red surfboard", "a wooden bench", "a busy street", "a white plate", "a tall building",
           "a small table", "the green grass", "a snowy hill", "a city sidewalk", "a large window",
           "a kitchen counter", "the train tracks"]
PLACES = ["", " in a park", " on a sunny day", " at the beach", " in the kitchen", " near the water",
          " in front of a house"]
WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be has had "
         "it or its first new after who they have two their been one more also other all into time over "
         "most some can only many year years may would between while during state city world school "
         "university company government system water river population area national war history "
         "century church family music team season game league film album series number million part "
         "group age people made known called used found include including became become however under "
         "near north south east west name named since several where there these those each such about "
         "early later until through against around both well high small large long short main local").split()


def caption(rng: np.random.Generator) -> str:
    """A COCO-length caption (9-13 words)."""
    parts = (SUBJECTS, ACTIONS, OBJECTS, PLACES)
    return "".join(f"{part[int(rng.integers(len(part)))]}{'' if i in (2, 3) else ' '}" for i, part in
                   enumerate(parts)).strip()


def write_photo(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    """A JPEG of ``size`` (width, height) with smooth colour regions and fine noise, like a photo's entropy."""
    from PIL import Image

    width, height = size
    coarse = rng.integers(0, 256, (max(height // 32, 1), max(width // 32, 1), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = (smooth + rng.integers(-12, 13, smooth.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=90)


def write_image_text(root: Path, val_images: int, train_images: int, tiny: bool) -> dict[str, Path]:
    """Photos and a Karpathy JSON: ``val_images`` (val and test share them) and ``train_images``, 5 captions each."""
    rng = np.random.default_rng(0)
    size = (64, 48) if tiny else (640, 480)
    images, sentence = [], 0
    for index in range(val_images + train_images):
        split = "val" if index < val_images else "train"
        name = f"{index:06d}.jpg"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        write_photo(root / "images" / split / name, rng, size)
        sentences = [{"raw": caption(rng), "sentid": sentence + j} for j in range(COCO["captions_per_image"])]
        sentence += len(sentences)
        images.append({"filepath": split, "filename": name, "imgid": index, "split": split, "sentences": sentences})
    for index in range(val_images):  # the test split: the same photos under new ids
        entry = dict(images[index], imgid=val_images + train_images + index, split="test")
        entry["sentences"] = [{"raw": s["raw"], "sentid": sentence + j} for j, s in enumerate(entry["sentences"])]
        sentence += len(entry["sentences"])
        images.append(entry)
    annotations = root / "dataset_coco.json"
    annotations.write_text(json.dumps({"dataset": "coco", "images": images}))
    return {"annotations": annotations, "image_root": root / "images"}


def passage_pool(rng: np.random.Generator, count: int = 2_000, words: int = 55) -> list[str]:
    """MS MARCO-length passages (55 words, ~330 characters) of common English words."""
    vocab = np.array(WORDS)
    return [" ".join(vocab[rng.integers(len(vocab), size=words)]) for _ in range(count)]


def write_beir(root: Path, passages: int, queries: int, train_queries: int = 64) -> Path:
    """A BEIR folder: ``passages`` passages, ``queries`` dev queries with one judged passage each, and training
    rows (``train_queries`` queries, one positive and three listed negatives each)."""
    rng = np.random.default_rng(1)
    pool = passage_pool(rng)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as handle:
        for row in range(passages):
            handle.write(json.dumps({"_id": f"p{row}", "title": "", "text": pool[(row * 7919) % len(pool)]}) + "\n")
    total = queries + train_queries
    with open(root / "queries.jsonl", "w") as handle:
        for row in range(total):
            handle.write(json.dumps({"_id": f"q{row}", "text": " ".join(pool[row % len(pool)].split()[:8])}) + "\n")
    judged = [f"q{q}\tp{(q * 104729) % passages}\t1" for q in range(queries)]
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judged) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judged) + "\n")
    with open(root / "train_triples.jsonl", "w") as handle:
        for q in range(queries, total):
            positive, negatives = q % passages, [(q * 31 + j) % passages for j in range(1, 4)]
            handle.write(json.dumps({"query_id": f"q{q}", "positive_ids": [f"p{positive}"],
                                     "negative_ids": [f"p{n}" for n in negatives]}) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- models
def _tokenizer() -> Any:
    """The all-MiniLM-L6-v2 tokenizer (BERT uncased word pieces, 30,522 tokens): BLIP's, ViLT's and the
    MS MARCO cross-encoder's vocabulary; CLIP's own BPE vocabulary is not available offline."""
    from transformers import AutoTokenizer

    from distill.pretrained import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def _tiny_text(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, **extra)


def _tiny_vision(image_size: int, patch: int = 16) -> dict[str, Any]:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                image_size=image_size, patch_size=patch)


def save_blip(folder: Path, tiny: bool, tokenizer: Any) -> Path:
    """BLIP ITM (``BlipConfig()``: ViT-B/16 at 384 px and a BERT-base text encoder with cross-attention, or a
    tiny one) with random weights, and its processor."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    shapes = TINY_SHAPES if tiny else REAL_SHAPES
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
               eos_token_id=tokenizer.sep_token_id)
    config = BlipConfig(text_config=_tiny_text(vocab_size=30524, max_position_embeddings=64, **ids),
                        vision_config=_tiny_vision(shapes["blip_image"]), image_text_hidden_size=16) if tiny \
        else BlipConfig()
    BlipForImageTextRetrieval(config).eval().save_pretrained(folder)
    size = shapes["blip_image"]
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": size, "width": size}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_models(root: Path, tiny: bool) -> dict[str, str]:
    """Random-weight models in ``save_pretrained`` folders, with their processors and tokenizers: BLIP, ViLT-B/32
    (``ViltConfig()``), CLIP ViT-B/32 (``CLIPConfig()``), the MiniLM-L6 cross-encoder, and a tiny cross-encoder."""
    from transformers import (BertConfig, BertForSequenceClassification, CLIPConfig, CLIPImageProcessor, CLIPModel,
                              ViltConfig, ViltForImageAndTextRetrieval, ViltImageProcessor, ViltProcessor)

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    shapes = TINY_SHAPES if tiny else REAL_SHAPES
    folders = {name: root / name for name in ("blip", "vilt", "clip", "cross_encoder", "small_cross_encoder")}
    save_blip(folders["blip"], tiny, tokenizer)
    vilt = ViltConfig(max_position_embeddings=40, **(_tiny_text() | {"image_size": 32, "patch_size": 16})) if tiny \
        else ViltConfig()
    ViltForImageAndTextRetrieval(vilt).eval().save_pretrained(folders["vilt"])
    ViltProcessor(image_processor=ViltImageProcessor(size={"shortest_edge": shapes["vilt_image"][0]}),
                  tokenizer=tokenizer).save_pretrained(folders["vilt"])
    text = dict(_tiny_text(max_position_embeddings=77) if tiny else {}, eos_token_id=tokenizer.sep_token_id,
                bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id)
    clip = CLIPConfig(text_config=text, vision_config=_tiny_vision(shapes["clip_image"]) if tiny else {},
                      projection_dim=512)  # the real embedding width, also for the tiny towers
    CLIPModel(clip).eval().save_pretrained(folders["clip"])
    size = shapes["clip_image"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                       ).save_pretrained(folders["clip"])
    tokenizer.save_pretrained(folders["clip"])
    minilm_l6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    for name, config in (("cross_encoder", _tiny_text() if tiny else minilm_l6), ("small_cross_encoder", _tiny_text())):
        BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=1,
                                                 **config)).eval().save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return {name: str(path) for name, path in folders.items()}


def small_encoder_config(width: int) -> dict[str, Any]:
    """The small passage encoder of the corpus measurements: one BERT layer, ``width``-d mean-pooled output."""
    return {"model_type": "bert", "vocab_size": 30522, "hidden_size": width, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": width, "max_position_embeddings": 512}


def build_cli(recipe_path: Path, overrides: Sequence[str], root: str) -> Any:
    """The recipe's model, data module and trainer (``DistillCLI(run=False)``), with ``overrides``."""
    from distill.cli.recipe import DistillCLI

    quiet = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             f"--trainer.default_root_dir={root}", "--data.init_args.num_workers=0"]
    return DistillCLI(args=["--config", str(recipe_path), *quiet, *overrides], run=False)


def coco_overrides(p: Mapping[str, Any]) -> list[str]:
    """Point the COCO recipe at the saved models and the synthetic photos; on a CPU the teacher runs in float32
    (without bf16 units a CPU multiplies bf16 matrices tens of times slower; the section gives this machine's)."""
    models, data = p["models"], p["data"]
    out = [f"--model.init_args.student.init_args.pretrained={models['clip']}",
           f"--model.init_args.teacher.init_args.pretrained={models['blip']}",
           f"--data.init_args.annotations={data['annotations']}", f"--data.init_args.image_root={data['image_root']}",
           f"--data.init_args.student_processor={models['clip']}",
           f"--data.init_args.teacher_processor={models['blip']}",
           f"--model.init_args.evaluator.init_args.diagnostic_anchors={p['diagnostic_anchors']}",
           f"--trainer.accelerator={'gpu' if p['device'] == 'cuda' else 'cpu'}"]
    if p["device"] != "cuda":
        out.append("--model.init_args.teacher_precision=32")
    return out


def msmarco_overrides(p: Mapping[str, Any], small: bool) -> list[str]:
    """Point the MS MARCO recipe at the saved cross-encoder and the synthetic BEIR folder; ``small`` swaps the
    student for the small encoder and the teacher for a tiny cross-encoder (corpus measurements)."""
    models = p["models"]
    teacher = models["small_cross_encoder" if small else "cross_encoder"]
    out = [f"--model.init_args.teacher.init_args.pretrained={teacher}", f"--data.init_args.data_dir={p['beir']}",
           f"--data.init_args.teacher_tokenizer={teacher}",
           f"--trainer.accelerator={'gpu' if p['device'] == 'cuda' else 'cpu'}"]
    if small:
        student = {"class_path": "distill.students.TextDualEncoder",
                   "init_args": {"pretrained": None, "pooling": "mean",
                                 "config": small_encoder_config(p["shapes"]["small_encoder_width"])}}
        out += [f"--model.init_args.student={json.dumps(student)}",
                f"--model.init_args.evaluator.init_args.embeddings_dir={p['work']}/embeddings"]
    elif p["tiny"]:
        out += ["--data.init_args.passage_max_length=32", "--data.init_args.teacher_max_length=32"]
    if p["device"] != "cuda":
        out.append("--model.init_args.teacher_precision=32")
    return out


# ---------------------------------------------------------------------------------------------- stand-ins
class CountingTeacher(torch.nn.Module):
    """A teacher where only the requested pairs matter: counts the forwards, pairs and distinct a / b items per
    forward (what BLIP encodes per call), and returns a fixed pseudo-random score per (a id, b id)."""

    has_embeddings = False

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the scorer a device
        self.calls = self.pairs = self.a_items = self.b_items = self.largest = self.most_a = self.most_b = 0

    def score_pairs(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], a_index: torch.Tensor,
                    b_index: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.pairs += int(a_index.numel())
        self.largest = max(self.largest, int(a_index.numel()))
        distinct_a, distinct_b = int(a_index.unique().numel()), int(b_index.unique().numel())
        self.a_items, self.b_items = self.a_items + distinct_a, self.b_items + distinct_b
        self.most_a, self.most_b = max(self.most_a, distinct_a), max(self.most_b, distinct_b)
        a_ids = next(iter(a.values()))[a_index].double()
        b_ids = next(iter(b.values()))[b_index].double()
        return (torch.sin(a_ids * 12.9898 + b_ids * 78.233) * 10).float()

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "pairs": self.pairs, "a_items": self.a_items, "b_items": self.b_items,
                "largest": self.largest, "most_a": self.most_a, "most_b": self.most_b}


class IdStore:
    """An item store that loads ids only: the chunk's real inputs are accounted for by formula (see the section)."""

    def load_a(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ids": ids.clone()}

    def load_b(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ids": ids.clone()}


class CorpusTexts:
    """A data-module stand-in with the ``b_texts(split)`` hook that ``distill index`` reads: the passages of a BEIR
    ``corpus.jsonl``, read line by line from the file as the build asks for them, never all held."""

    def __init__(self, corpus: Path) -> None:
        self.corpus = corpus
        with open(corpus, "rb") as handle:
            self.count = sum(1 for line in handle if line.strip())

    def __len__(self) -> int:
        return self.count

    def b_texts(self, split: str) -> Iterator[tuple[int, int, str]]:
        with open(self.corpus, encoding="utf-8") as handle:
            rows = (json.loads(line)["text"] for line in handle if line.strip())
            yield from ((row, row, text) for row, text in enumerate(rows))


def step_pair_structure(batch: int, k: int, max_pairs: int, dim: int = 64, seed: int = 0) -> dict[str, int]:
    """The teacher forwards of one training step at the recipe's B and K: the module's own candidate selection
    (in-batch top-K both ways, each distinct pair once, ``max_pairs`` per forward) over random unit embeddings."""
    import torch.nn.functional as F

    from distill.teachers.scoring import TeacherScorer
    from distill.training.candidates import InBatchNegatives, Side, StepView
    from distill.training.step import candidate_scores

    generator = torch.Generator().manual_seed(seed)
    emb_a = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    emb_b = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    ids = torch.arange(batch)
    rows = {"ids": ids}
    step = StepView(a=Side(emb_a, ids, ids, lambda: rows), b=Side(emb_b, ids, ids, lambda: rows),
                    similarity=emb_a @ emb_b.T, batch={}, k=k, live_teacher=True)
    teacher = CountingTeacher()
    candidate_scores([InBatchNegatives()], step, ["a2b", "b2a"], TeacherScorer(teacher, max_pairs))
    return teacher.counts()


# ---------------------------------------------------------------------------------------------- measurements
def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(run: Callable[[], Any]) -> float:
    """Floating-point operations of one call (matrix products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def _tokens(length: int, batch: int = 1, ids: str = "input_ids", mask: str = "attention_mask") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(length * 31 + batch)
    values = torch.randint(1_000, 20_000, (batch, length), generator=generator)
    return {ids: values, mask: torch.ones_like(values)}


def _vilt_image(shapes: Mapping[str, Any], batch: int = 1) -> dict[str, torch.Tensor]:
    canvas, (height, width) = shapes["vilt_canvas"], shapes["vilt_image"]
    mask = torch.zeros(batch, canvas, canvas, dtype=torch.long)
    mask[:, :height, :width] = 1
    return {"pixel_values": torch.randn(batch, 3, canvas, canvas), "pixel_mask": mask}


def _blip_flops(folder: str, s: Mapping[str, Any]) -> dict[str, float]:
    """BLIP's parts: vision tower per image, ITC text encoder per caption, ITM encoder per pair; and a check that
    ``score_pairs`` on 1 image, 2 captions and 2 pairs costs the sum of its parts."""
    from distill.teachers import BlipITMTeacher

    blip = BlipITMTeacher(folder)
    image = {"pixel_values": torch.randn(1, 3, s["blip_image"], s["blip_image"])}
    text, two = _tokens(s["blip_text"]), _tokens(s["blip_text"], 2)
    with torch.no_grad():
        tokens = blip.image_tokens(image)
    per = {"image": _flops(lambda: blip.image_tokens(image)), "caption": _flops(lambda: blip.embed_b(text)),
           "pair": _flops(lambda: blip.itm_logits(tokens, text["input_ids"], text["attention_mask"]))}
    whole = _flops(lambda: blip.score_pairs(image, two, torch.zeros(2, dtype=torch.long), torch.arange(2)))
    return {**per, "params": _params(blip), "vision_params": _params(blip.model.vision_model),
            "check": whole / (per["image"] + 2 * per["caption"] + 2 * per["pair"])}


def _vilt_flops(folder: str, s: Mapping[str, Any]) -> dict[str, float]:
    from distill.teachers import ViltRetrievalTeacher

    vilt = ViltRetrievalTeacher(folder)
    return {"params": _params(vilt), "pair": _flops(lambda: vilt.score(_vilt_image(s), _tokens(s["vilt_text"])))}


def _clip_flops(folder: str, s: Mapping[str, Any]) -> dict[str, float]:
    from distill.students import CLIPDualEncoder

    clip = CLIPDualEncoder(pretrained=folder).eval()
    pixels = {"pixel_values": torch.randn(1, 3, s["clip_image"], s["clip_image"])}
    return {"params": _params(clip), "image": _flops(lambda: clip.encode_a(pixels)),
            "caption": _flops(lambda: clip.encode_b(_tokens(s["clip_text"]))), "dim": clip.embed_dim}


def _cross_encoder_flops(folder: str, s: Mapping[str, Any]) -> dict[str, float]:
    from distill.teachers import TextCrossEncoderTeacher

    cross = TextCrossEncoderTeacher(folder)
    query = _tokens(s["ce_query"], ids="text_ids", mask="text_mask")
    passage = _tokens(s["ce_pair"] - s["ce_query"] - 3, ids="text_ids", mask="text_mask")  # 3 special tokens
    return {"params": _params(cross), "pair": _flops(lambda: cross.score(query, passage))}


def _minilm_flops(s: Mapping[str, Any]) -> dict[str, float]:
    from distill.pretrained import minilm_path
    from distill.students import TextDualEncoder

    minilm = TextDualEncoder(pretrained=minilm_path()).eval()
    return {"params": _params(minilm), "dim": minilm.embed_dim,
            "query": _flops(lambda: minilm.encode_a(_tokens(s["minilm_query"]))),
            "passage": _flops(lambda: minilm.encode_b(_tokens(s["minilm_passage"])))}


def measure_architectures(p: dict[str, Any]) -> dict[str, Any]:
    """Parameters and forward FLOPs per unit of every real architecture, one model in memory at a time."""
    s, models, out = p["shapes"], p["models"], {}
    out["blip"] = _blip_flops(models["blip"], s)
    out["vilt"] = _vilt_flops(models["vilt"], s)
    out["clip"] = _clip_flops(models["clip"], s)
    out["cross_encoder"] = _cross_encoder_flops(models["cross_encoder"], s)
    out["minilm"] = _minilm_flops(s)
    return out


def _chunk_inputs(kind: str, unit: str, count: int, s: Mapping[str, Any]) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """``(a, b, a_index, b_index)`` of one teacher forward: ``count`` images (``unit="image"``) or pairs."""
    if kind == "blip":
        size = s["blip_image"]
        images = {"pixel_values": torch.randn(count if unit == "image" else 1, 3, size, size)}
        captions = _tokens(s["blip_text"], count)
        index = torch.arange(count)
        return images, captions, index if unit == "image" else torch.zeros(count, dtype=torch.long), index
    if kind == "vilt":
        return _vilt_image(s), _tokens(s["vilt_text"], count), torch.zeros(count, dtype=torch.long), torch.arange(count)
    queries = _tokens(s["ce_query"], count, "text_ids", "text_mask")
    passages = _tokens(s["ce_pair"] - s["ce_query"] - 3, count, "text_ids", "text_mask")
    return queries, passages, torch.arange(count), torch.arange(count)


def measure_teacher_chunks(p: dict[str, Any]) -> dict[str, Any]:
    """Peak memory above the loaded weights of one teacher forward at a few chunk sizes (BLIP: its vision tower
    on ``count`` images, and ``count`` pairs of one image; ViLT and the cross-encoder: ``count`` pairs)."""
    from distill.inputs import to_device
    from distill.teachers import BlipITMTeacher, TextCrossEncoderTeacher, ViltRetrievalTeacher
    from distill.teachers.scoring import TeacherScorer

    kind, s, device = p["kind"], p["shapes"], Device(p["device"])
    build = {"blip": BlipITMTeacher, "vilt": ViltRetrievalTeacher, "cross_encoder": TextCrossEncoderTeacher}[kind]
    teacher = build(p["models"][kind]).to(device.torch)
    scorer = TeacherScorer(teacher, None, p["precision"])
    scorer.apply_precision()
    plan = [("image", n) for n in p.get("images", ())] + [("pair", n) for n in p["pairs"]]
    warm_up = [(unit, 1, False) for unit in dict.fromkeys(unit for unit, _ in plan)]
    touch(teacher)
    rows = []
    with MemoryProbe() as probe:
        for unit, count, measured in [*warm_up, *((unit, count, True) for unit, count in plan)]:
            a, b, a_index, b_index = _chunk_inputs(kind, unit, count, s)
            a, b = to_device(a, device.torch), to_device(b, device.torch)
            a_index, b_index = a_index.to(device.torch), b_index.to(device.torch)
            probe.reset()
            device.reset()
            started, cpu = device.now(), time.process_time()
            if unit == "image":
                scorer.embed("a", a)
            else:
                scorer.score_pairs(a, b, a_index, b_index)
            if measured:
                rows.append({"unit": unit, "count": count, **probe.block(), "cuda_peak": device.peak(),
                             "seconds": device.now() - started, "cpu_seconds": time.process_time() - cpu,
                             "input_bytes": tensor_bytes(a) + tensor_bytes(b)})
            del a, b
    return {"kind": kind, "precision": scorer.precision, "weight_bytes": _params(teacher) * scorer.dtype.itemsize,
            "rows": rows}


def measure_student_step(p: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of a student's forward (which holds the activations backward needs), its backward (which
    allocates the gradients), then its AdamW step, at a few batch sizes (CLIP: B images and B captions; MiniLM:
    B queries and 2B passages, the positive and one listed negative). The first step, which allocates AdamW's
    state, is measured apart."""
    import torch.nn.functional as F

    from distill.inputs import to_device
    from distill.pretrained import minilm_path
    from distill.students import CLIPDualEncoder, TextDualEncoder

    s, device, kind = p["shapes"], Device(p["device"]), p["kind"]
    student = (CLIPDualEncoder(pretrained=p["models"]["clip"]) if kind == "clip"
               else TextDualEncoder(pretrained=minilm_path())).to(device.torch).train()
    optimizer = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5)
    touch(student)

    def inputs(batch: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if kind == "clip":
            size = s["clip_image"]
            return {"pixel_values": torch.randn(batch, 3, size, size)}, _tokens(s["clip_text"], batch)
        return _tokens(s["minilm_query"], batch), _tokens(s["minilm_passage"], 2 * batch)

    rows = []
    with MemoryProbe() as probe:
        for index, batch in enumerate([p["batches"][0], *p["batches"]]):
            a, b = (to_device(x, device.torch) for x in inputs(batch))
            optimizer.zero_grad(set_to_none=True)
            probe.reset()
            device.reset()
            started = device.now()
            emb_a, emb_b = student.encode_a(a), student.encode_b(b)
            loss = F.cross_entropy(emb_a @ emb_b.T * student.logit_scale, torch.arange(batch, device=device.torch))
            forward, forward_cuda = probe.block(), device.peak()  # the activations backward needs are all held here
            probe.reset()
            loss.backward()
            backward, seconds = probe.block(), device.now() - started
            del emb_a, emb_b, loss
            probe.reset()
            device.reset()
            optimizer.step()
            rows.append({"batch": batch, "first": index == 0, **forward, "cuda_peak": forward_cuda,
                         "seconds": seconds, "backward": backward, "step": probe.block(),
                         "step_cuda_peak": device.peak(), "input_bytes": tensor_bytes(a) + tensor_bytes(b)})
            del a, b
    return {"kind": kind, "params": _params(student), "rows": rows,
            "lengths": [s["clip_text"]] if kind == "clip" else [s["minilm_query"], s["minilm_passage"]]}


def measure_train_step(p: dict[str, Any]) -> dict[str, Any]:
    """One training step of a recipe, end to end: the module's candidate selection and teacher scoring, its losses,
    backward and the recipe's optimizer (the first step: AdamW allocates its state)."""
    from lightning.pytorch.utilities import move_data_to_device

    device = Device(p["device"])
    batch_size, k = p["batch"], p["k"]
    overrides = [f"--data.init_args.batch_size={batch_size}", f"--model.init_args.num_hard_negatives={k}"]
    if p["recipe"] == "coco":
        overrides += coco_overrides(p) + [f"--data.init_args.limit_per_split={p['limit']}"]
        cli = build_cli(COCO_RECIPE, overrides, p["work"])
    else:
        cli = build_cli(MSMARCO_RECIPE, msmarco_overrides(p, small=False) + overrides, p["work"])
    module, data = cli.model, cli.datamodule
    data.setup("fit")
    module.setup("fit")
    module.to(device.torch).train()
    if module.scorer is not None:
        module.scorer.apply_precision()  # what on_fit_start does
    config = module.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    batch = move_data_to_device(next(iter(data.train_dataloader())), device.torch)
    touch(module)
    optimizer.zero_grad(set_to_none=True)
    with MemoryProbe() as probe:
        probe.reset()
        device.reset()
        started = device.now()
        inputs, stats = module.build_loss_inputs(batch)
        total = sum(module.loss_weights[name] * loss(inputs) for name, loss in module.losses.items())
        total.backward()
        optimizer.step()
        seconds = device.now() - started
        block = probe.block()
    return {"recipe": p["recipe"], "batch": batch_size, "k": k, **block, "cuda_peak": device.peak(),
            "seconds": seconds, "teacher_pairs": stats.get("teacher_pairs", 0.0), "calls": list(module.scorer.calls),
            "batch_bytes": tensor_bytes(batch), "student_params": _params(module.student),
            "teacher_params": _params(module.teacher)}


def phase_callback(probe: MemoryProbe) -> Any:
    """A Lightning callback that closes the encoding phase of a validation epoch (the batches) and opens the
    evaluator's phase (ranking, teacher work): it records the marks and the largest batch, and resets."""
    import lightning as L

    class PhaseMemory(L.Callback):
        def __init__(self) -> None:
            self.batch_bytes, self.batches = 0, 0
            self.encode: dict[str, int] = {}
            self.after_encode = 0
            self.started = time.process_time()
            self.encode_cpu = 0.0

        def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                    dataloader_idx: int = 0) -> None:
            self.batch_bytes = max(self.batch_bytes, tensor_bytes(batch))
            self.batches += 1

        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            self.encode = probe.block()
            self.after_encode = probe.rss()
            self.encode_cpu = time.process_time() - self.started
            probe.reset()

    return PhaseMemory()


def _validate(cli: Any, probe: MemoryProbe) -> dict[str, Any]:
    """Run the CLI trainer's validation with the phase callback; the marks of both phases and the metrics."""
    phases = phase_callback(probe)
    cli.trainer.callbacks.append(phases)
    probe.reset()
    started, cpu = time.perf_counter(), time.process_time()
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return {"encode": phases.encode, "after_encode": phases.after_encode, "compute": probe.block(),
            "batch_bytes": phases.batch_bytes, "batches": phases.batches, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu, "encode_cpu_seconds": phases.encode_cpu,
            "metrics": sorted(metrics[0]) if metrics else []}


def measure_validation(p: dict[str, Any]) -> dict[str, Any]:
    """``python -m distill validate`` of the COCO recipe over ``images`` synthetic photos x 5 captions."""
    device = Device(p["device"])
    cli = build_cli(COCO_RECIPE, coco_overrides(p) + [f"--data.init_args.limit_per_split={p['images']}"], p["work"])
    touch(cli.model)
    with MemoryProbe() as probe:
        before = probe.rss()
        device.reset()
        out = _validate(cli, probe)
    return {"images": p["images"], "captions": len(cli.datamodule.dataset("val")), "before": before, **out,
            "cuda_peak": device.peak(), "dim": int(cli.model.student.embed_dim)}


def measure_evaluator(p: dict[str, Any]) -> dict[str, Any]:
    """The COCO recipe's evaluator over ``images`` x 5 synthetic embeddings: buffering, then the ``stage``'s
    computation (val: Recall@K and the diagnostics; test: Recall@K and two-stage re-ranking), with a counting
    teacher behind the recipe's ``teacher_max_pairs``."""
    import torch.nn.functional as F

    from distill.evaluation import EvalContext, RecallEvaluator
    from distill.teachers.scoring import TeacherScorer

    settings, dim, per_image = p["settings"], p["dim"], COCO["captions_per_image"]
    evaluator = RecallEvaluator(two_stage_k=settings["two_stage_k"], diagnostics=True,
                                embedding_dtype=settings["dtype"])
    teacher = CountingTeacher()
    scorer = TeacherScorer(teacher, settings["max_pairs"])
    generator = torch.Generator().manual_seed(0)

    def encode(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(torch.randn(len(inputs["ids"]), dim, generator=generator), dim=-1)

    captions = p["images"] * per_image
    with MemoryProbe() as probe:
        before = probe.rss()
        started = time.process_time()
        for start in range(0, captions, settings["eval_batch"]):
            rows = torch.arange(start, min(start + settings["eval_batch"], captions))
            batch = {"a": {"ids": rows // per_image}, "b": {"ids": rows}, "a_id": rows // per_image, "b_id": rows}
            evaluator.update("student", batch, encode, encode)
        update, after_update = probe.block(), probe.rss()
        probe.reset()
        results = evaluator.compute(EvalContext(stage=p["stage"], scorer=scorer, items=IdStore,
                                                num_negatives=settings["k"]))
        compute = probe.block()
    return {"images": p["images"], "captions": captions, "stage": p["stage"], "before": before, "update": update,
            "after_update": after_update, "compute": compute, "teacher": teacher.counts(),
            "groups": sorted(results), "cpu_seconds": time.process_time() - started}


def measure_corpus(p: dict[str, Any]) -> dict[str, Any]:
    """``python -m distill validate`` of the MS MARCO recipe over a synthetic corpus, with the small encoder as the
    student (passage embeddings streamed to memory-mapped files) and a tiny cross-encoder for the diagnostics."""
    cli = build_cli(MSMARCO_RECIPE, msmarco_overrides(p, small=True), p["work"])
    touch(cli.model)
    with MemoryProbe() as probe:
        before = probe.rss()
        cli.datamodule.setup("validate")
        setup = probe.block()
        after_setup, after_setup_anon = probe.rss(), _status("RssAnon")
        out = _validate(cli, probe)
    texts = cli.datamodule.corpus
    return {"passages": len(texts), "text_chars": sum(len(t) for t in texts), "before": before, "setup": setup,
            "after_setup": after_setup, "after_setup_anon": after_setup_anon, **out,
            "dim": int(cli.model.student.embed_dim)}


def measure_index(p: dict[str, Any]) -> dict[str, Any]:
    """``distill index`` (:func:`distill.serving.index.folder.build_index`, the default FAISS flat backend) of a
    synthetic corpus with the small encoder, exported first; the passages come one at a time through the ``b_texts``
    hook. Two phases: items and encoding (up to the backend build), then the backend build and the manifest."""
    from distill.serving.export import export_student
    from distill.serving.index import folder
    from distill.students import TextDualEncoder

    work = Path(p["work"])
    config = small_encoder_config(p["shapes"]["small_encoder_width"])
    spec = {"class_path": "distill.students.TextDualEncoder", "init_args": {"config": config, "pooling": "mean"}}
    export_student(TextDualEncoder(config=config), work / "student", student_spec=spec,
                   datamodule=SimpleNamespace(tokenizer=_tokenizer(), max_length=256), onnx=False)
    data = CorpusTexts(Path(p["beir"]) / "corpus.jsonl")
    phases: dict[str, Any] = {}
    build_backend = folder._build_backend

    def phased(*args: Any, **kwargs: Any) -> Any:
        phases["encode"] = probe.block()
        phases["after_encode"], phases["after_encode_anon"] = probe.rss(), _status("RssAnon")
        probe.reset()
        return build_backend(*args, **kwargs)

    folder._build_backend = phased
    gc.collect()
    try:
        with MemoryProbe() as probe:
            before, before_anon = probe.rss(), _status("RssAnon")
            started = time.process_time()
            folder.build_index(work / "student", data, "test", work / "index", progress=False,
                               settings=folder.BackendSettings(vector_dtype="float16"))  # auto's choice at MS MARCO
            phases["backend"] = probe.block()
    finally:
        folder._build_backend = build_backend
    meta = json.loads((work / "index" / "index.json").read_text())
    return {"passages": len(data), "before": before, "before_anon": before_anon, **phases,
            "index_bytes": folder_bytes(work / "index"), "backend_bytes": meta["bytes"], "backend_name": meta["backend"],
            "cpu_seconds": time.process_time() - started, "dim": config["hidden_size"]}


def measure_index_vectors(p: dict[str, Any]) -> dict[str, Any]:
    """The FAISS flat build of ``distill index`` from synthetic float16 vectors of the real width (D=384,
    all-MiniLM-L6-v2's) in the ``.npy`` file encoding streams to: blocks read from the file, the float16 codes
    allocated once (:meth:`FaissIndex.build`), then written with ``faiss.write_index``."""
    from distill.serving.index import BackendSettings
    from distill.serving.index.faiss_backend import FaissIndex
    from distill.serving.index.vectors import VectorWriter

    work, rows, dim = Path(p["work"]), int(p["passages"]), int(p["dim"])
    rng = np.random.default_rng(0)
    with VectorWriter(work / "vectors.npy", rows, dim) as writer:
        for start in range(0, rows, 65536):
            block = rng.standard_normal((min(65536, rows - start), dim)).astype(np.float32)
            writer.append(block / np.linalg.norm(block, axis=1, keepdims=True))
        writer.close()
    (work / "index").mkdir()
    gc.collect()
    with MemoryProbe() as probe:
        before = probe.rss()
        started = time.process_time()
        settings = BackendSettings(backend="faiss", vector_dtype="float16")  # auto's choice at MS MARCO size
        index = FaissIndex.build(work / "vectors.npy", settings.resolve("dense"))
        built = probe.block()
        index.save(work / "index")
        saved = probe.block()
    return {"passages": rows, "dim": dim, "before": before, "build": built, "save": saved,
            "index_bytes": index.nbytes, "file_bytes": (work / "vectors.npy").stat().st_size,
            "cpu_seconds": time.process_time() - started}


def measure_index_encoder(p: dict[str, Any]) -> dict[str, Any]:
    """One encoding chunk of ``distill index`` with the real all-MiniLM-L6-v2 student: ``encode_texts`` of
    ``chunk`` passages truncated to ``tokens`` tokens (the MS MARCO recipe's passage length), peak above the loaded
    weights."""
    from distill.pretrained import minilm_path
    from distill.serving.index.corpus import encode_texts
    from distill.students import TextDualEncoder

    chunk, tokens = p["chunk"]
    student = TextDualEncoder(pretrained=minilm_path()).eval()
    touch(student)
    tokenizer = _tokenizer()
    words = " ".join(WORDS * 4)
    texts = [f"{row} {words}" for row in range(chunk)]
    gc.collect()
    with MemoryProbe() as probe:
        before = probe.rss()
        started = time.process_time()
        out = [block.shape for block in encode_texts(student, tokenizer, texts, "b", tokens, chunk)]
        encode = probe.block()
    return {"chunk": chunk, "tokens": tokens, "before": before, "encode": encode, "shapes": [list(s) for s in out],
            "params": _params(student), "cpu_seconds": time.process_time() - started}


def _precision_rows(name: str, teacher: torch.nn.Module, a: Any, b: Any, anchors: int, device: Device) -> list[dict]:
    """Scores of an ``anchors x candidates`` grid of pairs in bf16 and fp16 against float32."""
    from distill.evaluation.diagnostics import spearman_per_row
    from distill.inputs import to_device
    from distill.teachers.scoring import TeacherScorer

    candidates = next(iter(b.values())).shape[0]
    a_index = torch.arange(anchors).repeat_interleave(candidates).to(device.torch)
    b_index = torch.arange(candidates).repeat(anchors).to(device.torch)
    a, b = to_device(a, device.torch), to_device(b, device.torch)
    reference = TeacherScorer(teacher.to(device.torch), None, "32").score_pairs(a, b, a_index, b_index).cpu()
    rows = []
    for precision in ("bf16", "16"):
        scorer = TeacherScorer(copy.deepcopy(teacher), None, precision)
        scorer.apply_precision()
        try:
            scores = scorer.score_pairs(a, b, a_index, b_index).cpu()
        except RuntimeError as error:  # e.g. an fp16 kernel missing on this device
            rows.append({"teacher": name, "precision": precision, "error": str(error).splitlines()[0][:120]})
            continue
        difference = (scores - reference).abs()
        grid, reference_grid = scores.view(anchors, -1), reference.view(anchors, -1)
        rows.append({"teacher": name, "precision": precision, "pairs": int(a_index.numel()),
                     "max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
                     "std": float(reference.std()), "identical": bool(torch.equal(scores, reference)),
                     "top1": float((grid.argmax(1) == reference_grid.argmax(1)).float().mean()),
                     "spearman": float(spearman_per_row(reference_grid.double(), grid.double()).mean())})
    return rows


def measure_precision(p: dict[str, Any]) -> dict[str, Any]:
    """``teacher_precision`` bf16 and 16 against 32: the trained demo teacher on 32 shapes test images x their 32
    first captions, a tiny random BLIP (and, on a GPU, the full-size one) on random images x captions."""
    from distill.data import ShapesDataModule
    from distill.teachers import BlipITMTeacher, ShapesCrossEncoder

    device, rows = Device(p["device"]), []
    data = ShapesDataModule(num_train=8, num_val=8, num_test=32, eval_batch_size=96)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    first = torch.nonzero(torch.cat([torch.tensor([True]), batch["a_id"][1:] != batch["a_id"][:-1]])).flatten()
    first = first[:p["precision_anchors"]]
    images = {"pixel_values": batch["a"]["pixel_values"][first]}
    captions = {key: value[first] for key, value in batch["b"].items()}
    teacher = ShapesCrossEncoder(weights=str(DEMO_TEACHER)).freeze()
    rows += _precision_rows("demo teacher (trained, artifacts/shapes-teacher)", teacher, images, captions,
                            len(first), device)
    folder = save_blip(Path(p["work"]) / "tiny-blip", True, _tokenizer())
    size = TINY_SHAPES["blip_image"]
    torch.manual_seed(0)
    pixels = {"pixel_values": torch.randn(8, 3, size, size)}
    rows += _precision_rows("BLIP ITM, tiny config (random weights)", BlipITMTeacher(str(folder)), pixels,
                            _tokens(TINY_SHAPES["blip_text"], 16), 8, device)
    if device.cuda:
        size = REAL_SHAPES["blip_image"]
        rows += _precision_rows("BLIP ITM base, 384 px (random weights)", BlipITMTeacher(p["models"]["blip"]),
                                {"pixel_values": torch.randn(8, 3, size, size)},
                                _tokens(REAL_SHAPES["blip_text"], 16), 8, device)
    return {"rows": rows}


MEASUREMENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "architectures": measure_architectures, "teacher_chunks": measure_teacher_chunks,
    "student_step": measure_student_step, "train_step": measure_train_step, "validation": measure_validation,
    "evaluator": measure_evaluator, "corpus": measure_corpus, "index": measure_index, "precision": measure_precision,
    "index_vectors": measure_index_vectors, "index_encoder": measure_index_encoder,
}


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Job:
    """One measurement: its key in the results, the function and its parameters."""

    key: str
    measure: str
    params: dict[str, Any]


def plan_jobs(sizes: Sizes, base: dict[str, Any], settings: Mapping[str, Mapping[str, Any]], cuda: bool) -> list[Job]:
    """Every measurement of a run, cheapest first."""
    precision = settings["coco"]["precision"] if cuda else "32"
    jobs = [Job("architectures", "architectures", base), Job("precision", "precision", base)]
    for kind, images, pairs in (("blip", sizes.blip_images, sizes.blip_pairs), ("vilt", (), sizes.vilt_pairs),
                                ("cross_encoder", (), sizes.ce_pairs)):
        jobs.append(Job(f"chunks/{kind}", "teacher_chunks",
                        {**base, "kind": kind, "images": images, "pairs": pairs, "precision": precision}))
    for kind, batches in (("clip", sizes.clip_batch), ("minilm", sizes.minilm_batch)):
        jobs.append(Job(f"student/{kind}", "student_step", {**base, "kind": kind, "batches": batches}))
    coco_batch, coco_k = sizes.coco_step
    jobs.append(Job("train/coco", "train_step", {**base, "recipe": "coco", "batch": coco_batch, "k": coco_k,
                                                  "limit": max(coco_batch, sizes.train_images)}))
    msmarco_batch = 4 if sizes.tiny else settings["msmarco"]["batch"]
    jobs.append(Job("train/msmarco", "train_step", {**base, "recipe": "msmarco", "batch": msmarco_batch,
                                                     "k": settings["msmarco"]["k"], "beir": base["beirs"][0]}))
    for images in sizes.val_images:
        jobs.append(Job(f"validation/real/{images}", "validation", {**base, "images": images}))
    tiny = {"models": base["tiny_models"], "data": base["tiny_data"], "shapes": TINY_SHAPES}
    for images in sizes.growth_images:
        jobs.append(Job(f"validation/growth/{images}", "validation", {**base, **tiny, "images": images}))
    dim = 16 if sizes.tiny else 512
    for stage in ("val", "test"):
        for images in sizes.scale_images:
            jobs.append(Job(f"evaluator/{stage}/{images}", "evaluator",
                            {**base, "images": images, "stage": stage, "dim": dim, "settings": dict(settings["coco"])}))
    for passages, beir in zip(sizes.corpus, base["beirs"], strict=True):
        jobs.append(Job(f"corpus/{passages}", "corpus", {**base, "beir": beir, "passages": passages}))
    for passages, beir in zip(sizes.index, base["index_beirs"], strict=True):
        jobs.append(Job(f"index/{passages}", "index", {**base, "beir": beir, "passages": passages}))
    for passages in sizes.index_vectors:  # sizes well above the 16,384-row blocks the build reads
        jobs.append(Job(f"index-vectors/{passages}", "index_vectors", {**base, "passages": passages,
                                                                        "dim": INDEX_DIM}))
    jobs.append(Job("index-encoder", "index_encoder", {**base, "chunk": list(sizes.index_chunk)}))
    return [job for job in jobs if not job.key.startswith(sizes.skip)]


def run_job(job: Job, in_process: bool) -> dict[str, Any]:
    """Run one measurement here (``in_process``) or in a fresh Python process; its result and wall time."""
    work = Path(job.params["scratch"]) / job.key.replace("/", "-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = {**job.params, "work": str(work)}
    started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if in_process:
        result = MEASUREMENTS[job.measure](params)
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, __file__, "--child", job.measure, "--params", json.dumps(params)],
                              env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode or not lines:
            raise RuntimeError(f"measurement {job.key} failed (exit {done.returncode}):\n{done.stderr[-6000:]}")
        result = json.loads(lines[-1][len(RESULT_PREFIX):])
    shutil.rmtree(work, ignore_errors=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime
    return {**result, "job_seconds": time.perf_counter() - started, **({} if in_process else {"job_cpu_seconds": cpu})}


def child(measure: str, params: str) -> None:
    """Entry of a measurement process: run it and print its result as one JSON line."""
    torch.set_num_threads(1)
    result = MEASUREMENTS[measure](json.loads(params))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _once(folder: Path, make: Callable[[], Any]) -> Any:
    """``make()`` unless ``folder`` holds a finished earlier result (a ``--scratch`` folder is reused)."""
    done = folder / ".done.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    value = make()
    done.write_text(json.dumps(value))
    return value


def prepare(sizes: Sizes, scratch: Path, device: str) -> dict[str, Any]:
    """Models, photos and BEIR folders every measurement shares; the parameters they all receive (``tiny``: the
    tiny models and small photos of the growth series)."""
    started = time.perf_counter()
    models = _once(scratch / "models", lambda: save_models(scratch / "models", sizes.tiny))
    data = _once(scratch / "coco", lambda: {key: str(value) for key, value in write_image_text(
        scratch / "coco", max(sizes.val_images), sizes.train_images, sizes.tiny).items()})
    tiny_models = models if sizes.tiny else _once(scratch / "models-tiny",
                                                  lambda: save_models(scratch / "models-tiny", True))
    tiny_data = _once(scratch / "coco-tiny", lambda: {key: str(value) for key, value in write_image_text(
        scratch / "coco-tiny", max(sizes.growth_images, default=1), sizes.train_images, True).items()})
    beirs = [_once(scratch / f"beir-{n}", lambda n=n: str(write_beir(scratch / f"beir-{n}", n, sizes.queries)))
             for n in sizes.corpus]
    index_beirs = [_once(scratch / f"beir-{n}", lambda n=n: str(write_beir(scratch / f"beir-{n}", n, sizes.queries)))
                   for n in sizes.index]
    print(f"prepared models and data in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return {"models": models, "data": data, "beirs": beirs, "shapes": TINY_SHAPES if sizes.tiny else REAL_SHAPES,
            "index_beirs": index_beirs, "tiny": sizes.tiny, "device": device, "diagnostic_anchors": sizes.diagnostic_anchors,
            "precision_anchors": 8 if sizes.tiny else 32, "scratch": str(scratch),
            "tiny_models": tiny_models, "tiny_data": tiny_data}


# ---------------------------------------------------------------------------------------------- analysis
def line_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``(x, y)`` points (slope 0 through a single point)."""
    xs, ys = np.array([x for x, _ in points], float), np.array([y for _, y in points], float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return 0.0, float(ys.mean()) if len(ys) else 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)


def runs(results: Mapping[str, Any], prefix: str, size: str) -> list[dict[str, Any]]:
    """The results whose key starts with ``prefix``, sorted by ``size``."""
    found = [value for key, value in results.items() if key.startswith(prefix) and isinstance(value, dict)]
    return sorted(found, key=lambda value: value[size])


def peak_of(result: Mapping[str, Any], *phases: str) -> int:
    return max(result[phase]["peak"] for phase in phases)


def anon_of(result: Mapping[str, Any], *phases: str) -> int:
    return max(result[phase]["peak_anon"] for phase in phases)


def unit_slopes(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Teacher forward: bytes above the weights per image / pair (host and CUDA) and seconds per unit."""
    out = {}
    for unit in sorted({row["unit"] for row in result["rows"]}):
        rows = [row for row in result["rows"] if row["unit"] == unit]
        out[unit] = {"host": line_fit([(r["count"], r["peak"] - r["start"]) for r in rows])[0],
                     "cuda": line_fit([(r["count"], r["cuda_peak"]) for r in rows])[0],
                     "seconds": max(r["seconds"] / r["count"] for r in rows),
                     "cpu_seconds": max(r.get("cpu_seconds", r["seconds"]) / r["count"] for r in rows)}
    return out


def student_slopes(result: Mapping[str, Any]) -> dict[str, float]:
    """Student step: activation bytes per sample (slope of the forward's peak over the batch size), the backward's
    and the AdamW step's peaks above their starts (first step: AdamW allocates its state)."""
    rows = [row for row in result["rows"] if not row["first"]]
    first = next(row for row in result["rows"] if row["first"])
    return {"per_sample": line_fit([(r["batch"], r["peak"] - r["start"]) for r in rows])[0],
            "backward": max(r["backward"]["peak"] - r["backward"]["start"] for r in rows),
            "first_step": first["step"]["peak"] - first["step"]["start"],
            "step": max(r["step"]["peak"] - r["step"]["start"] for r in rows),
            "cuda_per_sample": line_fit([(r["batch"], r["cuda_peak"]) for r in rows])[0]}


@dataclass
class Derived:
    """Growth per item, slopes and the projections built from them (bytes, FLOPs)."""

    values: dict[str, float] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)


def _mib(value: float) -> str:
    return f"{value / MiB:,.0f}"


def _gib(value: float) -> str:
    return f"{value / 2 ** 30:,.2f}"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _e(value: float) -> str:
    return f"{value:.2e}".replace("e+", "e")


def _hours(flops: float, tflops: float) -> str:
    seconds = flops / (tflops * 1e12)
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min" if seconds >= 60 \
        else f"{seconds:,.1f} s"


# ---------------------------------------------------------------------------------------------- report
def architecture_table(arch: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    b, v, c, x, m = arch["blip"], arch["vilt"], arch["clip"], arch["cross_encoder"], arch["minilm"]
    h, w = s["vilt_image"]
    rows = [
        ("BLIP ITM base (teacher, COCO)", b["params"], f"image {s['blip_image']} px "
         f"({(s['blip_image'] // 16) ** 2 + 1} tokens): "
         f"{b['image'] / 1e9:,.1f}; caption, ITC text encoder (L={s['blip_text']}): {b['caption'] / 1e9:,.1f}; "
         f"pair, ITM cross-attention encoder (L={s['blip_text']}): {b['pair'] / 1e9:,.1f}"),
        ("ViLT-B/32 (teacher, Flickr30K)", v["params"], f"pair, {h}x{w} image on a {s['vilt_canvas']} canvas + "
         f"{s['vilt_text']} tokens: {v['pair'] / 1e9:,.1f}"),
        ("CLIP ViT-B/32 (student, COCO)", c["params"], f"image {s['clip_image']} px: {c['image'] / 1e9:,.1f}; "
         f"caption (L={s['clip_text']}): {c['caption'] / 1e9:,.2f}"),
        ("MiniLM-L6 cross-encoder (teacher, MS MARCO)", x["params"], f"pair (L={s['ce_pair']}): "
         f"{x['pair'] / 1e9:,.1f}"),
        ("all-MiniLM-L6-v2 (student, MS MARCO; real weights)", m["params"], f"query (L={s['minilm_query']}): "
         f"{m['query'] / 1e9:,.2f}; passage (L={s['minilm_passage']}): {m['passage'] / 1e9:,.1f}"),
    ]
    lines = ["| model | parameters | weights fp32 / bf16 MiB | forward GFLOPs per unit |", "|---|---|---|---|"]
    lines += [f"| {name} | {count / 1e6:,.1f}M | {_mib(4 * count)} / {_mib(2 * count)} | {flops} |"
              for name, count, flops in rows]
    lines.append("")
    lines.append(f"BLIP's `score_pairs` on 1 image, 2 captions, 2 pairs counts {b['check']:.3f}x the sum of its parts "
                 "(image + 2 captions + 2 pairs): the formulas below add the parts.")
    return lines


def memory_table(results: Mapping[str, Any], d: Derived) -> list[str]:
    """The measured host memory: validation, the evaluator at COCO size, the corpus, the index, training steps."""
    cuda = any(isinstance(v, dict) and v.get("cuda_peak") for v in results.values())
    header = "| measurement | size | peak RSS MiB | above start MiB | peak anonymous MiB |" + \
        (" peak CUDA MiB |" if cuda else "")
    lines = [header, "|---" * (5 + cuda) + "|"]

    def row(name: str, size: str, peak: float, start: float, anon: float, cuda_peak: float = 0) -> None:
        lines.append(f"| {name} | {size} | {_mib(peak)} | {_mib(peak - start)} | {_mib(anon)} |" +
                     (f" {_mib(cuda_peak)} |" if cuda else ""))

    for series, name in (("real", "real models, 640x480 photos"), ("growth", "tiny towers, D=512, 64x48 photos")):
        for r in runs(results, f"validation/{series}/", "captions"):
            row(f"validation, COCO recipe (`distill validate`), {name}",
                f"{_n(r['images'])} images / {_n(r['captions'])} captions", peak_of(r, "encode", "compute"),
                r["before"], anon_of(r, "encode", "compute"), r.get("cuda_peak", 0))
    for stage, what in (("val", "Recall@K + diagnostics"), ("test", "Recall@K + two-stage top-256")):
        for r in runs(results, f"evaluator/{stage}/", "captions"):
            row(f"COCO evaluator, {stage} ({what}), synthetic embeddings",
                f"{_n(r['images'])} images / {_n(r['captions'])} captions", peak_of(r, "update", "compute"),
                r["before"], anon_of(r, "update", "compute"))
    for r in runs(results, "corpus/", "passages"):
        row("validation, MS MARCO recipe, small encoder, embeddings memory-mapped", f"{_n(r['passages'])} passages",
            peak_of(r, "setup", "encode", "compute"), r["before"], anon_of(r, "setup", "encode", "compute"))
    for key, name in (("train/coco", "training step, COCO recipe"), ("train/msmarco", "training step, MS MARCO recipe")):
        if key in results:
            r = results[key]
            row(name, f"B={r['batch']}, K={r['k']}, {r['teacher_pairs']:.0f} teacher pairs", r["peak"], r["start"],
                r["peak_anon"], r.get("cuda_peak", 0))
    return lines
def growth_lines(results: Mapping[str, Any], settings: Mapping[str, Any], d: Derived) -> list[str]:
    """Growth per item of every measurement that grows, against what it should be."""
    coco, out = settings["coco"], []
    growth_runs, real = runs(results, "validation/growth/", "captions"), runs(results, "validation/real/", "captions")
    if len(growth_runs) >= 2:
        itemsize = 2 if coco["dtype"] == "float16" else 4
        embedding = growth_runs[0]["dim"] * itemsize * (1 + 1 / COCO["captions_per_image"])
        held = line_fit([(r["captions"], r["after_encode"] - r["before"]) for r in growth_runs])[0]
        encode = line_fit([(r["captions"], r["encode"]["peak"]) for r in growth_runs])[0]
        compute = line_fit([(r["captions"], r["compute"]["peak"] - r["compute"]["start"]) for r in growth_runs])[0]
        d.values.update(val_held=held, val_encode=encode, val_embedding=embedding)
        out.append(f"- **Growth per caption, validation with the COCO recipe: {_n(held)} bytes held after the last "
                   f"batch ({held / embedding:.2f}x the embeddings), {_n(encode)} bytes of peak while encoding "
                   f"({encode / embedding:.2f}x)**, over {_n(growth_runs[0]['captions'])}-"
                   f"{_n(growth_runs[-1]['captions'])} captions (tiny towers with CLIP's {growth_runs[0]['dim']}-d "
                   f"{coco['dtype']} output). The embeddings are {_n(embedding)} bytes per caption "
                   f"({growth_runs[0]['dim']} x {itemsize} for the caption plus a fifth of its image's). The ranking at "
                   f"the end adds a transient of {_n(compute)} bytes per caption here, which stops growing once the "
                   "split has `key_chunk` (16,384) keys: the evaluator rows above measure it at COCO size.")
    if len(real) >= 2:
        first, last = real[0], real[-1]
        extra = last["encode"]["peak"] - first["encode"]["peak"]
        out.append(f"- With the real models and photos, the peak while encoding is {_mib(first['encode']['peak'] - first['before'])} "
                   f"and {_mib(last['encode']['peak'] - last['before'])} MiB above the loaded models at "
                   f"{_n(first['captions'])} and {_n(last['captions'])} captions ({extra / MiB:+.1f} MiB, "
                   f"{extra / (last['captions'] - first['captions']):,.0f} bytes per caption from these two sizes only; the "
                   "series above is the growth measurement): "
                   f"{(last['encode']['peak'] - last['before']) / last['batch_bytes']:.1f} evaluation batches of "
                   f"{_mib(last['batch_bytes'])} MiB in flight (the one in use, Lightning's one-batch look-ahead, the "
                   "one being collated), whatever the split size.")
    if real:
        per_caption = real[-1]["batch_bytes"] / coco["eval_batch"]
        embedding = real[-1]["dim"] * (2 if coco["dtype"] == "float16" else 4) * (1 + 1 / COCO["captions_per_image"])
        out.append(f"- A caption's inputs in an evaluation batch take {_n(per_caption)} bytes (student and teacher "
                   f"pixels and tokens, {_mib(real[-1]['batch_bytes'])} MiB per {coco['eval_batch']}-pair batch), "
                   f"{per_caption / embedding:,.0f}x the embeddings validation keeps of it.")
    scale = {stage: runs(results, f"evaluator/{stage}/", "captions") for stage in ("val", "test")}
    if all(scale.values()):
        val, test = scale["val"][-1], scale["test"][-1]
        held = line_fit([(r["captions"], r["after_update"] - r["before"]) for r in scale["val"]])[0]
        out.append(f"- The evaluator alone, fed synthetic embeddings (6 runs up to {_n(val['captions'])} captions): "
                   f"{_n(held)} bytes per caption buffered; its computation at the end peaks "
                   f"{_mib(val['compute']['peak'] - val['compute']['start'])} MiB (val) and "
                   f"{_mib(test['compute']['peak'] - test['compute']['start'])} MiB (test) above the buffers at COCO "
                   "size: score blocks of at most `query_chunk` x `key_chunk` (1,024 x 16,384 x 4 bytes = 64 MiB) with "
                   f"their top-k temporaries, and at test the top-{settings['coco']['two_stage_k']} lists "
                   f"({settings['coco']['two_stage_k']} x 8 bytes per query, a few copies).")
    corpus = runs(results, "corpus/", "passages")
    if len(corpus) >= 2:
        text = line_fit([(r["passages"], r["after_setup"] - r["before"]) for r in corpus])[0]
        evaluation = line_fit([(r["passages"], anon_of(r, "encode", "compute") - r["after_setup_anon"])
                               for r in corpus])[0]
        total = line_fit([(r["passages"], peak_of(r, "setup", "encode", "compute") - r["before"]) for r in corpus])[0]
        chars = corpus[-1]["text_chars"] / corpus[-1]["passages"]
        d.values.update(corpus_text=text, corpus_eval=evaluation, corpus_total=total, corpus_chars=chars)
        out.append(f"- MS MARCO recipe's validation, per passage: {_n(text)} bytes held by the data module after "
                   f"`setup` (the passage texts, {chars:,.0f} characters on average, their ids and row tables), "
                   f"{_n(evaluation)} bytes of anonymous memory added by the evaluation (embeddings streamed to "
                   f"disk: {corpus[0]['dim']} x 2 bytes per passage in the file); {_n(total)} bytes of peak RSS in all, which "
                   "counts the memory-mapped file's pages once ranking reads them.")
    return out


def index_lines(results: Mapping[str, Any]) -> list[str]:
    """``distill index`` streamed: measured peaks per phase and size, growth per passage, and the projection to MS
    MARCO with all-MiniLM-L6-v2 (8.8M x 384 float16 vectors)."""
    builds, vectors = runs(results, "index/", "passages"), runs(results, "index-vectors/", "passages")
    encoder = results.get("index-encoder")
    if not builds and not vectors:
        return []
    meta = results.get("meta", {})
    lines = ["### `distill index` at MS MARCO size: streamed, in bounded memory", "",
             f"Command: `{meta.get('index_command', 'OMP_NUM_THREADS=1 python benchmarks/scale.py --only index')}` "
             f"({meta.get('index_seconds', 0) / 60:,.0f} min).", "",
             "How: each build runs in its own process (peaks as above). `distill index` of a synthetic BEIR corpus "
             "(55-word passages, read line by line from `corpus.jsonl` through the `b_texts` hook) "
             "with the small encoder (one BERT layer, D=64, random weights) and the default backend, FAISS flat: "
             "phase 1 writes the items to the item table (twice: as read, then in tie order) and encodes them 256 at a "
             "time into the float16 vector file; phase 2 builds the index from that file in blocks of 16,384 rows and "
             "writes the manifest. 'FAISS flat, D=384' builds the backend alone from synthetic float16 vectors of "
             "all-MiniLM-L6-v2's width in the same file format. 'one encoding chunk' is `encode_texts` of one chunk "
             "with the real all-MiniLM-L6-v2 weights, its passages truncated at the recipe's 256 tokens.", "",
             "| measurement | size | peak RSS MiB | above start MiB | peak anonymous MiB |", "|---|---|---|---|---|"]

    def row(name: str, size: str, block: Mapping[str, int], start: int) -> None:
        lines.append(f"| {name} | {size} | {_mib(block['peak'])} | {_mib(block['peak'] - start)} | "
                     f"{_mib(block['peak_anon'])} |")

    for r in builds:
        row(f"`distill index`, small encoder (D={r['dim']}), phase 1: items + encoding", f"{_n(r['passages'])} passages",
            r["encode"], r["before"])
        row(f"`distill index`, small encoder (D={r['dim']}), phase 2: FAISS flat build + manifest",
            f"{_n(r['passages'])} passages", r["backend"], r["before"])
    for r in vectors:
        row(f"FAISS flat (float16 codes) from the vector file, D={r['dim']}", f"{_n(r['passages'])} passages",
            {key: max(r["build"][key], r["save"][key]) for key in ("peak", "peak_anon")}, r["before"])
    if encoder:
        row(f"one encoding chunk, all-MiniLM-L6-v2 ({encoder['params'] / 1e6:.1f}M parameters)",
            f"{encoder['chunk']} passages x {encoder['tokens']} tokens", encoder["encode"], encoder["before"])
    lines.append("")
    n, dim = MSMARCO["passages"], INDEX_DIM
    if len(builds) >= 2:
        small = builds[0]["dim"]
        encode, encode_0 = line_fit([(r["passages"], r["encode"]["peak"] - r["before"]) for r in builds])
        encode_anon = line_fit([(r["passages"], r["encode"]["peak_anon"] - r["before_anon"]) for r in builds])[0]
        backend, backend_0 = line_fit([(r["passages"], r["backend"]["peak"] - r["before"]) for r in builds])
        folder = builds[-1]["index_bytes"] / builds[-1]["passages"]
        lines.append(f"- **Growth per passage, phase 1 (items + encoding): {_n(encode)} bytes of peak RSS "
                     f"({_n(encode_anon)} anonymous)**, over {_n(builds[0]['passages'])}-{_n(builds[-1]['passages'])} "
                     "passages: the item table's row arrays while they are written (line offset, id, tie order) and "
                     f"nothing per passage of the texts or the vectors, which go to disk as they come. **Phase 2 (FAISS "
                     f"flat build): {_n(backend)} bytes per passage** at D={small}, against {small} x 2 = {small * 2} "
                     f"bytes of float16 codes. The folder: {_n(folder)} bytes per passage (the item table, the FAISS "
                     "codes, the manifest).")
        if len(vectors) >= 2:
            per_vector = line_fit([(r["passages"], max(r["build"]["peak"], r["save"]["peak"]) - r["before"])
                                   for r in vectors])[0]
            lines.append(f"- FAISS flat from the vector file at D={dim}: {_n(per_vector)} bytes per passage of peak "
                         f"RSS, against {dim} x 2 = {dim * 2} bytes of float16 codes: the vectors are held once (the "
                         "codes allocated at their final size; the file is read in blocks of 16,384 rows).")
        else:
            per_vector = backend + 2 * (dim - small)
        weights = (encoder or {}).get("params", 22_713_216) * 4
        chunk = (encoder["encode"]["peak"] - encoder["before"]) if encoder else 0
        base = builds[-1]["before"]
        phase1 = base + encode_0 + encode * n + weights + chunk
        phase2 = base + backend_0 + (backend - 2 * small) * n + per_vector * n
        lines.append(f"- **Projection, `distill index` of MS MARCO ({n:,} passages) with all-MiniLM-L6-v2 "
                     f"(D={dim}, default FAISS flat backend):** phase 1: {_mib(base)} MiB (process) + "
                     f"{_mib(encode_0)} MiB (fit intercept: student, tokenizer) + {_n(encode)} x N = "
                     f"{_gib(encode * n)} GiB (item rows) + {_mib(weights)} MiB (MiniLM weights, fp32) + "
                     f"{_mib(chunk)} MiB (one chunk's activations) = {_gib(phase1)} GiB; phase 2: {_mib(base)} MiB + "
                     f"{_mib(backend_0)} MiB + ({_n(backend - 2 * small)} + {_n(per_vector)}) x N = {_gib(phase2)} GiB "
                     f"(the float16 codes are {_gib(n * dim * 2)} GiB of it). **Peak: {_gib(max(phase1, phase2))} GiB "
                     f"of host memory**, the texts included (read from the data as the build goes, never all held), "
                     "against 46.6 GiB + 4.6 GiB of texts projected for the whole-corpus build this replaced. The "
                     "numpy backend builds nothing (it serves the vector file, memory-mapped, as `dense.npy`): its "
                     f"peak is phase 1's. On disk: the vector file {_gib(n * dim * 2)} GiB while building (moved into "
                     "place for numpy, removed for FAISS) and the item table (the texts as JSON lines plus "
                     f"{_n(folder - 2 * small)} bytes per passage here, the texts included).")
    return lines


def teacher_memory_lines(results: Mapping[str, Any], settings: Mapping[str, Any], d: Derived) -> list[str]:
    """Activation memory per image / pair of each teacher forward, and at the recipes' largest forwards."""
    lines = ["| teacher forward | host bytes per unit above the weights (fp32) | CPU seconds per unit (fp32, 1 thread) |"
             " at the recipe's largest forwards (fp32) |", "|---|---|---|---|"]
    training = results.get("structure", {}).get("coco", {})
    two_stage = (runs(results, "evaluator/test/", "captions") or [{}])[-1].get("teacher", {})
    for key, name, unit, recipe_name in (("chunks/blip", "BLIP vision tower", "image", "coco"),
                                         ("chunks/blip", "BLIP ITM + ITC text", "pair", "coco"),
                                         ("chunks/vilt", "ViLT", "pair", "flickr"),
                                         ("chunks/cross_encoder", "MiniLM-L6 cross-encoder", "pair", "msmarco")):
        if key not in results:
            continue
        slope = unit_slopes(results[key])[unit]["host"]
        seconds = unit_slopes(results[key])[unit]["cpu_seconds"]
        d.values[f"{key}/{unit}"] = slope
        if unit == "image":
            at = f"training: {training.get('most_a', 0)} images, {_mib(slope * training.get('most_a', 0))} MiB; " \
                 f"two-stage: {two_stage.get('most_a', 0)} images, {_mib(slope * two_stage.get('most_a', 0))} MiB"
        else:
            count = settings[recipe_name]["max_pairs"]
            at = f"{count} pairs: {_mib(slope * count)} MiB"
        lines.append(f"| {name} | {_n(slope)} per {unit} | {seconds:.2f} | {at} |")
    lines += ["", "A BLIP forward runs its vision tower on the distinct images of its pairs, then the ITM encoder on the "
              "pairs, so its peak is the larger of the two phases. In bf16 the activations take about half."]
    return lines


def coco_step_projection(results: Mapping[str, Any], settings: Mapping[str, Any], d: Derived) -> list[str]:
    """Device memory of a COCO training step at the recipe's B and K, from the measured slopes."""
    needed = ("train/coco", "student/clip", "chunks/blip")
    if not all(key in results for key in needed) or "structure" not in results:
        return []
    coco, step, structure = settings["coco"], results["train/coco"], results["structure"]["coco"]
    student, teacher = step["student_params"], step["teacher_params"]
    per_sample = student_slopes(results["student/clip"])["per_sample"]
    slopes = unit_slopes(results["chunks/blip"])
    pair, image = slopes["pair"]["host"], slopes["image"]["host"]
    s = REAL_SHAPES
    inputs = 3 * 4 * (s["clip_image"] ** 2 + s["blip_image"] ** 2)
    batch, calls = coco["batch"], structure
    terms = {"student weights, gradients, AdamW (16 bytes x parameters)": 16 * student,
             "teacher weights in bf16 (2 bytes x parameters)": 2 * teacher,
             f"student activations ({_n(per_sample)} bytes per sample x B)": per_sample * batch,
             f"teacher forward, bf16 ({_n(pair)} x {calls['largest']} pairs + {_n(image)} x {calls['most_a']} "
             "images, fp32 bytes / 2)": (pair * calls["largest"] + image * calls["most_a"]) / 2,
             f"batch inputs ({_n(inputs)} bytes of pixels per pair x B)": inputs * batch}
    total = sum(terms.values())
    d.values["coco_step_device"] = total
    predicted = 12 * student + per_sample * step["batch"] + pair * max(step["calls"] or [0]) + image * step["batch"] \
        + inputs * step["batch"]
    lines = [f"COCO training step on a GPU at the recipe's B={batch}, K={coco['k']}, teacher_max_pairs="
             f"{coco['max_pairs']}, teacher in bf16 (one step's teacher forwards: {calls['pairs']:,} distinct pairs in "
             f"{calls['calls']} forwards of at most {calls['largest']} pairs and {calls['most_a']} images):", ""]
    lines += [f"- {name}: {_gib(value)} GiB" for name, value in terms.items()]
    lines += [f"- **total: {_gib(total)} GiB** of device memory (an upper bound for the teacher: its vision and ITM "
              "phases do not overlap; bf16 activations taken as half of the fp32 bytes measured here).",
              f"- Check at the CPU step's B={step['batch']}, K={step['k']} (fp32 teacher, {step['teacher_pairs']:.0f} "
              f"pairs): the same sum, without the weights, gives {_mib(predicted)} MiB; the step measured "
              f"{_mib(step['peak'] - step['start'])} MiB above the loaded weights (the parts peak at different "
              "moments, so the sum is an upper bound)."]
    return lines


def host_projection_lines(results: Mapping[str, Any], settings: Mapping[str, Any], d: Derived) -> list[str]:
    """Host memory of COCO validation and MS MARCO validation / indexing at full size."""
    out, coco = [], settings["coco"]
    val = runs(results, "validation/real/", "captions")
    arch = results.get("architectures", {})
    if val and "val_encode" in d.values and arch:
        n = COCO["val_images"] * COCO["captions_per_image"]
        r = val[-1]
        batch, item = r["batch_bytes"], 3 * 4 * REAL_SHAPES["blip_image"] ** 2
        weights = 4 * (arch["clip"]["params"] + arch["blip"]["params"])
        inflight = r["encode"]["peak"] - r["before"]
        cpu = r["encode"]["peak"] + d.values["val_encode"] * (n - r["captions"])
        gpu = r["before"] - weights + inflight + d.values["val_encode"] * n + 32 * item
        workers = coco["workers"] * 2 * batch
        lean = batch - coco["eval_batch"] * item
        lean_inflight = inflight - (inflight / batch) * (batch - lean)
        d.values.update(coco_val_cpu=cpu, coco_val_gpu=gpu)
        out += [f"- **COCO val ({COCO['val_images']:,} images, {n:,} captions), this CPU process** (both models in "
                f"host memory, the teacher in fp32, `num_workers: 0`): {_mib(r['encode']['peak'])} MiB measured at "
                f"{_n(r['captions'])} captions + {_n(d.values['val_encode'])} bytes x {_n(n - r['captions'])} more "
                f"captions = **{_gib(cpu)} GiB**, at the peak while encoding; the evaluator's end peaked lower "
                f"({_mib(r['compute']['peak'])} MiB). That run's diagnostics looked at "
                f"{results.get('meta', {}).get('sizes', {}).get('diagnostic_anchors', '?')} anchors; the recipe's 256 "
                f"anchors x {coco['k']} add BLIP forwards of {coco['max_pairs']} pairs, "
                f"{_gib(d.values.get('chunks/blip/pair', 0) * coco['max_pairs'])} GiB each in fp32 on a CPU (device "
                "memory on a GPU).",
                f"- **The same run's host memory on a GPU** (the weights, {_mib(weights)} MiB here, move to the device; "
                f"the CUDA runtime's own host memory is not included): {_mib(r['before'] - weights)} MiB process + "
                f"{_mib(inflight)} MiB batches in flight + {_n(d.values['val_encode'])} x {n:,} bytes of growth + 32 x "
                f"{_n(item)} bytes of teacher inputs for one diagnostics forward = **{_gib(gpu)} GiB** with "
                f"`num_workers: 0`; the recipe's `num_workers: {coco['workers']}` adds up to {coco['workers']} x 2 "
                f"prefetched batches x {_mib(batch)} MiB = {_gib(workers)} GiB, whatever the split size.",
                f"- {_mib(coco['eval_batch'] * item)} MiB of each {_mib(batch)} MiB evaluation batch measured here are "
                f"the teacher's 384 px pixels. Evaluation batches leave them out unless the evaluator's "
                f"`evaluate_teacher` is set (diagnostics and two-stage load the teacher's items through the item "
                f"store). Without them a batch is {_mib(lean)} MiB: {_mib(lean_inflight)} MiB in flight and "
                f"{_gib(coco['workers'] * 2 * lean)} GiB of prefetch with {coco['workers']} workers, "
                f"{_gib(gpu - inflight + lean_inflight + coco['workers'] * 2 * lean)} GiB in all on a GPU with the "
                f"recipe's {coco['workers']} workers (against {_gib(gpu + workers)} GiB with the teacher's pixels)."]
    scale = runs(results, "evaluator/test/", "captions")
    if scale and val and "coco_val_gpu" in d.values:
        t, r = scale[-1], val[-1]
        counts, item = t["teacher"], 3 * 4 * REAL_SHAPES["blip_image"] ** 2
        weights = 4 * (arch["clip"]["params"] + arch["blip"]["params"])
        compute = t["compute"]["peak"] - t["compute"]["start"]
        end = r["before"] - weights + r["batch_bytes"] + d.values["val_encode"] * t["captions"] + compute \
            + counts["most_a"] * item
        vision = d.values.get("chunks/blip/image", 0) * counts["most_a"] / 2
        d.values.update(coco_test_end=end, coco_test_vision=vision)
        out.append(f"- **COCO test with two-stage top-{coco['two_stage_k']} on a GPU, host memory at the end of the "
                   f"epoch**: {_mib(r['before'] - weights)} MiB process + {_mib(r['batch_bytes'])} MiB (the last batch, "
                   f"still held) + {_mib(d.values['val_encode'] * t['captions'])} MiB of buffers + {_mib(compute)} MiB "
                   f"for the evaluator's computation (measured at {_n(t['captions'])} captions) + the teacher inputs of "
                   f"one forward loaded on the host, up to {counts['most_a']} distinct images x 3 x 384 x 384 x 4 bytes "
                   f"= {_mib(counts['most_a'] * item)} MiB: **{_gib(end)} GiB**, below the encoding peak above. On the "
                   f"device, that forward's vision tower holds {counts['most_a']} images: {_gib(vision)} GiB of bf16 "
                   "activations (half the fp32 bytes measured), more than a whole training step's teacher forward.")
    corpus = runs(results, "corpus/", "passages")
    if corpus and "corpus_text" in d.values:
        n, dim = MSMARCO["passages"], results.get("architectures", {}).get("minilm", {}).get("dim", 384)
        base = corpus[-1]["before"]
        text, evaluation = d.values["corpus_text"] * n, d.values["corpus_eval"] * n
        d.values["msmarco_val_projected"] = base + text + evaluation
        out.append(f"- **MS MARCO validation over {n:,} passages, host memory: {_gib(base)} GiB (process with the "
                   f"models) + {_n(d.values['corpus_text'])} x N = {_gib(text)} GiB (data module: texts, ids, rows) + "
                   f"{_n(d.values['corpus_eval'])} x N = {_gib(evaluation)} GiB (evaluation) = "
                   f"{_gib(base + text + evaluation)} GiB** anonymous memory; the passage embeddings "
                   f"({n:,} x {dim} x 2 bytes = {_gib(n * dim * 2)} GiB) stay in the memory-mapped file "
                   "(`embeddings_dir`), read through the page cache.")
    return out


def teacher_cost_lines(results: Mapping[str, Any], settings: Mapping[str, Any], tflops: float) -> list[str]:
    """Teacher FLOPs per training epoch (live teacher) and per evaluation, from the architectures' FLOP counts."""
    if "architectures" not in results or "structure" not in results:
        return []
    arch, structure = results["architectures"], results["structure"]
    blip, vilt, cross = arch["blip"], arch["vilt"], arch["cross_encoder"]
    clip, minilm = arch["clip"], arch["minilm"]
    coco, flickr, marco = settings["coco"], settings["flickr"], settings["msmarco"]
    rows = []

    def blip_flops(counts: Mapping[str, int]) -> float:
        return counts["pairs"] * blip["pair"] + counts["a_items"] * blip["image"] + counts["b_items"] * blip["caption"]

    c = structure["coco"]
    steps = COCO["train_images"] * COCO["captions_per_image"] // coco["batch"]
    rows.append(("COCO, BLIP live, training epoch", f"B={coco['batch']}, K={coco['k']}: {c['pairs']:,} pairs x F_pair + "
                 f"{c['a_items']} image encodings x F_image + {c['b_items']} caption encodings x F_caption per step",
                 blip_flops(c), steps))
    rows.append(("COCO, CLIP student (forward + backward ~ 3x forward)", "3 x B x (F_image + F_caption) per step",
                 3 * coco["batch"] * (clip["image"] + clip["caption"]), steps))
    f = structure["flickr"]
    steps = FLICKR["train_images"] * FLICKR["captions_per_image"] // flickr["batch"]
    rows.append(("Flickr30K, ViLT live, training epoch", f"B={flickr['batch']}, K={flickr['k']}: {f['pairs']:,} pairs "
                 "x F_pair per step", f["pairs"] * vilt["pair"], steps))
    pairs = marco["batch"] * (1 + marco["k"] + marco["negatives"])
    steps = MSMARCO["train_pairs"] // marco["batch"]
    rows.append(("MS MARCO, cross-encoder live, training epoch", f"B x (1 + K + listed) = {pairs} pairs x F_pair per "
                 "step (a2b only)", pairs * cross["pair"], steps))
    rows.append(("MS MARCO, MiniLM student (forward + backward)", "3 x B x (F_query + 2 F_passage) per step",
                 3 * marco["batch"] * (minilm["query"] + 2 * minilm["passage"]), steps))
    for stage, name in (("test", f"COCO test, two-stage top-{coco['two_stage_k']}, both directions"),
                        ("val", "COCO val, diagnostics (256 anchors x K)")):
        scale = runs(results, f"evaluator/{stage}/", "captions")
        if scale and scale[-1]["images"] == COCO["val_images"]:
            counts = scale[-1]["teacher"]
            rows.append((name, f"{counts['pairs']:,} pairs, {counts['a_items']:,} image and {counts['b_items']:,} "
                         "caption encodings (counted)", blip_flops(counts), 1))
    test = runs(results, "evaluator/test/", "captions")
    note = []
    if test and test[-1]["images"] == COCO["val_images"]:
        counts = test[-1]["teacher"]
        once = counts["pairs"] * blip["pair"] + COCO["val_images"] * blip["image"] + counts["b_items"] * blip["caption"]
        note = ["", f"At COCO test, {counts['a_items']:,} of the {counts['pairs']:,} two-stage pairs brought an image "
                "encoding: a BLIP forward encodes the distinct images of its pairs, and a forward of caption->image "
                f"pairs holds up to {counts['most_a']} of them. Encoding each of the {COCO['val_images']:,} test "
                f"images once would bring the test to {_e(once)} FLOPs ({_hours(once, tflops)} at {tflops:,.0f} "
                "TFLOP/s)."]
    lines = ["| work | per step (formula) | FLOPs per step | steps | FLOPs in all | "
             f"at {tflops:,.0f} TFLOP/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {formula} | {_e(per)} | {steps:,} | {_e(per * steps)} | {_hours(per * steps, tflops)} |"
              for name, formula, per, steps in rows]
    return lines + note


def device_lines(results: Mapping[str, Any]) -> list[str]:
    """A GPU run: peak CUDA memory and throughput of each measurement at the recipes' sizes."""
    lines = ["| measurement | size | peak CUDA MiB | seconds | per second |", "|---|---|---|---|---|"]
    for key in ("chunks/blip", "chunks/vilt", "chunks/cross_encoder"):
        for row in results.get(key, {}).get("rows", []):
            lines.append(f"| teacher forward, {key.split('/')[1]} | {row['count']} {row['unit']}s | "
                         f"{_mib(row['cuda_peak'])} | {row['seconds']:.3f} | {row['count'] / row['seconds']:,.0f} |")
    for key in ("student/clip", "student/minilm"):
        for row in results.get(key, {}).get("rows", []):
            if not row["first"]:
                lines.append(f"| student forward + backward, {key.split('/')[1]} | B={row['batch']} | "
                             f"{_mib(row['cuda_peak'])} | {row['seconds']:.3f} | {row['batch'] / row['seconds']:,.0f} |")
    for key in ("train/coco", "train/msmarco"):
        if key in results:
            r = results[key]
            lines.append(f"| training step, {key.split('/')[1]} | B={r['batch']}, K={r['k']} | {_mib(r['cuda_peak'])} | "
                         f"{r['seconds']:.3f} | {1 / r['seconds']:,.2f} |")
    for r in runs(results, "validation/real/", "captions"):
        lines.append(f"| validation, COCO recipe | {_n(r['captions'])} captions | {_mib(r['cuda_peak'])} | "
                     f"{r['seconds']:.1f} | {r['captions'] / r['seconds']:,.0f} |")
    return lines


def precision_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| teacher | precision | pairs | max \\|score - fp32\\| | mean \\|score - fp32\\| | fp32 score sd | "
             "best candidate kept | Spearman vs fp32 |", "|---|---|---|---|---|---|---|---|"]
    for row in results.get("precision", {}).get("rows", []):
        if "error" in row:
            lines.append(f"| {row['teacher']} | {row['precision']} | - | {row['error']} | | | | |")
            continue
        values = [row["max_abs"], row["mean_abs"]]
        cells = " | ".join("NaN" if math.isnan(v) else f"{v:.4f}" for v in values)
        lines.append(f"| {row['teacher']} | {row['precision']} | {row['pairs']:,} | {cells} | {row['std']:.3f} | "
                     f"{100 * row['top1']:.0f}% | {row['spearman']:.4f} |")
    return lines


def render(results: Mapping[str, Any], settings: Mapping[str, Any], tflops: float) -> str:
    """The markdown section: command, machine, method, measured tables, projections with formulas."""
    failed = {key: value["error"] for key, value in results.items() if isinstance(value, dict) and "error" in value}
    results = {key: value for key, value in results.items() if key not in failed}
    meta = results.get("meta", {})
    m = meta.get("machine", {})
    quick, s = meta.get("quick", False), TINY_SHAPES if meta.get("quick") else REAL_SHAPES
    d = Derived()
    coco, marco = settings["coco"], settings["msmarco"]
    title = "## Scale: memory and teacher cost at COCO and MS MARCO size"
    if meta.get("device", "cpu") != "cpu":
        title += f" (on {meta['device']}: peak device memory and throughput at the recipes' sizes)"
    lines = [title, "",
             f"Command: `{meta.get('command', 'python benchmarks/scale.py')}`", ""]
    if quick:
        lines += ["**Quick run: tiny models and sizes; the numbers only show that the script works.**", ""]
    lines += [f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (1 thread used), "
              f"{m.get('memory', 0) / 2 ** 30:,.0f} GiB RAM, {'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; "
              f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}; "
              f"{meta.get('seconds', 0) / 60:,.0f} min in all.", "",
              "How: the real architectures from their configs with random weights, loaded by the recipes "
              f"(`configs/coco`: B={coco['batch']}, K={coco['k']}, teacher_max_pairs={coco['max_pairs']}, eval batch "
              f"{coco['eval_batch']}, two-stage top-{coco['two_stage_k']} at test, diagnostics at validation, "
              f"{coco['dtype']} embeddings; `configs/msmarco`: B={marco['batch']}, K={marco['k']}, "
              f"teacher_max_pairs={marco['max_pairs']}); synthetic inputs of real shapes (640x480 JPEG photos, "
              "COCO-length captions, 55-word passages). Each measurement runs in its own process; peak RSS is "
              "`VmHWM` from `/proc/self/status`, reset by writing 5 to `/proc/self/clear_refs` before the measured "
              "block; anonymous memory (`RssAnon`, i.e. without file pages such as memory-mapped embeddings) is "
              "sampled every 10 ms; `MALLOC_MMAP_THRESHOLD_=131072` returns freed blocks to the system at once. The "
              "weights (memory-mapped from safetensors) are read once before a block starts, so 'above start' is what "
              "the step or the evaluation adds to the loaded models. On this CPU the teachers run in fp32 (matrix "
              f"products: {m.get('fp32_gflops', 86):,.0f} GFLOP/s in fp32, {m.get('bf16_gflops', 1):,.1f} in bf16, one "
              "thread) and the validation diagnostics look at "
              f"{meta.get('sizes', {}).get('diagnostic_anchors', '?')} anchors instead of 256 (their teacher work does "
              "not grow with the split); the CPU training step runs at "
              f"B={results.get('train/coco', {}).get('batch', '?')}, K={results.get('train/coco', {}).get('k', '?')} "
              "(the recipe's B=64, K=16 would take ~15 min of BLIP here) and is projected to the recipe's B and K "
              "below.", "", "### Measured host memory", ""]
    lines += memory_table(results, d) + [""] + growth_lines(results, settings, d)
    index = index_lines(results)
    if index:
        lines += ["", "<!-- scale-index:start -->", *index, "<!-- scale-index:end -->"]
    if meta.get("device", "cpu") != "cpu":
        lines += ["", "### Measured on the device", ""] + device_lines(results)
    if "architectures" in results:
        lines += ["", "### Architectures (real sizes, random weights; FLOPs counted on one forward)", ""]
        lines += architecture_table(results["architectures"], s)
    if meta.get("device", "cpu") == "cpu":
        lines += ["", "### Teacher memory per forward", ""] + teacher_memory_lines(results, settings, d)
        lines += ["", "### Projections", ""] + coco_step_projection(results, settings, d) + [""]
        lines += host_projection_lines(results, settings, d)
    lines += ["", f"### Teacher cost (FLOPs = count x FLOPs per unit from the architectures table; times at "
              f"{tflops:,.0f} TFLOP/s sustained, an example to replace with your device's)", ""]
    lines += teacher_cost_lines(results, settings, tflops)
    lines += ["", "### Teacher precision (`teacher_precision`) against fp32", ""] + precision_lines(results)
    if any(math.isnan(row.get("max_abs", 0.0)) for row in results.get("precision", {}).get("rows", [])):
        lines += ["", "NaN: a randomly initialised BLIP's vision activations are ~1e-6, below fp16's normal range; "
                  "in fp16 they underflow to 0 and the ITC normalisation divides 0 by 0. bf16 keeps float32's "
                  "exponent range, which is why the recipes use it."]
    if failed:
        lines += ["", "### Measurements that failed", ""]
        lines += [f"- `{key}`: {error.strip().splitlines()[-1][:300]}" for key, error in failed.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command line
def matmul_gflops(dtype: torch.dtype, size: int = 512, repeats: int = 3) -> float:
    """Single-thread matrix-product throughput of this CPU in ``dtype`` (GFLOP/s)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(), "memory": memory, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "gpu": gpu,
            "fp32_gflops": matmul_gflops(torch.float32), "bf16_gflops": matmul_gflops(torch.bfloat16, 256, 1)}


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (defaults left out)."""
    parts = ["python benchmarks/scale.py"] if args.quick or args.device != "cpu" else \
        ["OMP_NUM_THREADS=1 python benchmarks/scale.py"]
    if args.quick:
        parts.append("--quick")
    if args.device != "cpu":
        parts.append(f"--device {args.device}")
    if Path(args.out).resolve() != DEFAULT_OUT:
        parts.append(f"--out {args.out}")
    return " ".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, in this process (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to measure peak CUDA memory and throughput")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file whose scale section is replaced")
    parser.add_argument("--results", help=f"raw results JSON (default {DEFAULT_RESULTS.relative_to(REPO)}; "
                                          "not written by --quick unless given)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the measurements whose key starts with this (repeatable); others are kept "
                             "from --results")
    parser.add_argument("--report-only", action="store_true", help="write the section from --results, measure nothing")
    parser.add_argument("--scratch", help="folder for models and data (default: a temporary folder, removed)")
    parser.add_argument("--sustained-tflops", type=float, default=200.0,
                        help="the device throughput the teacher-cost times assume (default 200, an example)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, sizes: Sizes, settings: Mapping[str, Mapping[str, Any]],
            results: dict[str, Any], results_path: Path | None) -> None:
    """Prepare the shared models and data, then run every planned measurement, saving results as they come."""
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="distill-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        base = prepare(sizes, scratch, args.device)
        jobs = [job for job in plan_jobs(sizes, base, settings, args.device == "cuda")
                if not args.only or any(job.key.startswith(prefix) for prefix in args.only)]
        for number, job in enumerate(jobs, start=1):
            print(f"[{number}/{len(jobs)}] {job.key}", file=sys.stderr, flush=True)
            try:
                results[job.key] = run_job(job, in_process=args.quick)
            except Exception as error:  # one failed measurement is reported, the others still run
                if args.quick:
                    raise
                print(f"{job.key} failed: {error}", file=sys.stderr)
                results[job.key] = {"error": str(error)[-3000:]}
            if results_path is not None:
                results_path.parent.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=1))
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    meta = results.setdefault("meta", {})
    meta.update({"machine": machine(), "command": command_line(args), "quick": args.quick, "device": args.device,
                 "sizes": {key: getattr(sizes, key) for key in sizes.__dataclass_fields__}})
    if not args.only:
        meta["seconds"] = time.perf_counter() - started
    if not args.only or all(prefix.startswith("index") for prefix in args.only):
        meta.update(index_command=command_line(args) + " --only index" +
                    (f" --results {args.results}" if args.results else ""), index_seconds=sum(
            value.get("job_seconds", 0) for key, value in results.items() if key.startswith("index")
            and isinstance(value, dict)))
    structure = {name: step_pair_structure(settings[name]["batch"], settings[name]["k"], settings[name]["max_pairs"])
                 for name in ("coco", "flickr")}
    results["structure"] = structure
    if results_path is not None:
        results_path.write_text(json.dumps(results, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.params)
        return
    torch.set_num_threads(1)
    settings = recipe_settings()
    sizes = QUICK if args.quick else gpu_sizes(settings) if args.device == "cuda" else FULL
    default = DEFAULT_RESULTS if args.device == "cpu" else DEFAULT_RESULTS.with_name(f"scale-results-{args.device}.json")
    results_path = Path(args.results) if args.results else (None if args.quick else default)
    results: dict[str, Any] = {}
    if (args.report_only or args.only) and results_path is not None and results_path.is_file():
        results = json.loads(results_path.read_text())
    if not args.report_only:
        measure(args, sizes, settings, results, results_path)
    from distill.cli.report import update_markdown_section

    if args.only and all(prefix.startswith("index") for prefix in args.only) and "architectures" not in results:
        block = "\n".join(index_lines(results))  # the index sub-section alone, inside the existing scale section
        print(block)
        update_markdown_section(args.out, "scale-index", block)
        return
    section = render(results, settings, args.sustained_tflops)
    print(section)
    update_markdown_section(args.out, "scale" if args.device == "cpu" else f"scale-{args.device}", section)


if __name__ == "__main__":
    main()

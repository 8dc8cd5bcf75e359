"""Tiny models, data and recipe helpers shared by every test (the one helpers module).

Every model is randomly initialised from a tiny config (CPU, seeded, offline); Hugging Face models are the
exact classes a preset loads, saved with ``save_pretrained`` next to a tokenizer or processor built from a
small vocabulary. Classes here are also loaded by ``class_path`` from recipes under test
(``tests.helpers.ScoreOnlyTeacher``) and imported by spawned worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from distill.data import ShapesDataModule, collate_pairs
from distill.inputs import Inputs
from distill.instantiate import instantiate
from distill.losses import CPRD, DCD, DistillationLoss, InfoNCE, LogitKL, LossInputs, MarginMSE
from distill.losses.infonce import symmetric_infonce_loss
from distill.students import DualEncoder, TimmImageTower, TransformersTextTower
from distill.students.towers import Tower
from distill.teachers import ShapesCrossEncoder, Teacher
from distill.evaluation import RecallEvaluator
from distill.training import DistillationModule
from distill.training.candidates import CachedCandidates, InBatchNegatives

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "configs" / "demo"

TINY_TEACHER = dict(vocab_size=64, max_length=32, image_size=32, patch_size=16, width=32, heads=2,
                    image_layers=1, text_layers=1, fusion_layers=1, embed_dim=16, mlp_ratio=2)

TINY_DATA = dict(num_train=48, num_val=8, num_test=8, image_size=32, batch_size=8, eval_batch_size=16)


def make_student(embed_dim: int = 16) -> DualEncoder:
    image = TimmImageTower("resnet10t")
    text = TransformersTextTower(config=dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    return DualEncoder(image, text, embed_dim=embed_dim)


# ---------------------------------------------------------------------------------------------- command line
TINY = ["--data.init_args.num_train=16", "--data.init_args.num_val=4", "--data.init_args.num_test=4",
        "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=16", "--data.init_args.image_size=32",
        "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size=32",
        "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads=2",
        "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size=64",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit_args(recipe: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(DEMO / recipe), f"--trainer.default_root_dir={tmp_path}", *TINY, *extra]


def error_line(capsys: pytest.CaptureFixture[str], args: list[str], status: int = 2) -> str:
    """Run ``distill <args>``; assert it exits with ``status`` after exactly one ``distill: error:`` line."""
    from distill.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------- Hugging Face models and data
WORDS = ["a", "the", "of", "photo", "red", "green", "blue", "yellow", "circle", "square", "triangle",
         "cat", "dog", "on", "left", "right", "small", "big", "what", "is", "who", "capital", "france",
         "paris", "wrote", "hamlet", "shakespeare", "river", "longest", "nile", "mount", "everest",
         "highest", "mountain", "planet", "largest", "jupiter", "city", "world", "in", "and", "was", "by"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_VOCAB = BERT_SPECIALS + WORDS
IMAGE_SIZE = 32
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
SHAPES = ("circle", "square", "triangle")


def bert_tokenizer(folder: Path, model_max_length: int = 40):
    """A word-level BertTokenizer over :data:`WORDS` (ids: specials 0-4, then words)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(BERT_VOCAB) + "\n")
    return BertTokenizer(vocab=str(vocab), model_max_length=model_max_length)


def clip_tokenizer():
    """A character-level CLIPTokenizer (BPE without merges)."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)


def tiny_text_config(**extra) -> dict:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, **extra)


def tiny_vision_config(image_size: int = IMAGE_SIZE) -> dict:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                image_size=image_size, patch_size=16)


@dataclass(frozen=True)
class TinyModels:
    blip: Path
    vilt: Path
    clip: Path
    bert: Path
    cross_encoder: Path


def save_blip(folder: Path, image_size: int = IMAGE_SIZE) -> Path:
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    tokenizer = bert_tokenizer(folder / "vocab", model_max_length=35)
    config = BlipConfig(
        text_config=tiny_text_config(vocab_size=len(BERT_VOCAB), max_position_embeddings=64, pad_token_id=0,
                                     bos_token_id=2, sep_token_id=3, eos_token_id=3),
        vision_config=tiny_vision_config(image_size), image_text_hidden_size=16, projection_dim=16,
    )
    BlipForImageTextRetrieval(config).eval().save_pretrained(folder)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def save_vilt(folder: Path) -> Path:
    from transformers import ViltConfig, ViltForImageAndTextRetrieval, ViltImageProcessor, ViltProcessor

    tokenizer = bert_tokenizer(folder / "vocab", model_max_length=40)
    config = ViltConfig(vocab_size=len(BERT_VOCAB), max_position_embeddings=40, image_size=IMAGE_SIZE, patch_size=16,
                        max_image_length=-1, **tiny_text_config())
    ViltForImageAndTextRetrieval(config).eval().save_pretrained(folder)
    image_processor = ViltImageProcessor(size={"shortest_edge": IMAGE_SIZE}, size_divisor=16)
    ViltProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=tiny_text_config(vocab_size=len(tokenizer), max_position_embeddings=64,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id),
        vision_config=tiny_vision_config(), projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = bert_tokenizer(folder / "vocab", model_max_length=64)
    config = BertConfig(vocab_size=len(BERT_VOCAB), max_position_embeddings=64, **tiny_text_config())
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_cross_encoder(folder: Path, tokenizer=None, vocab_size: int | None = None) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tokenizer if tokenizer is not None else bert_tokenizer(folder / "vocab", model_max_length=64)
    config = BertConfig(vocab_size=vocab_size or len(tokenizer), max_position_embeddings=64, num_labels=1,
                        **tiny_text_config())
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- data
def draw_image(path: Path, color: str, shape: str, size: tuple[int, int] = (40, 48)) -> None:
    image = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(image)
    box = (8, 8, size[0] - 8, size[1] - 8)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLORS[color])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_image_text_data(root: Path, per_split: dict[str, int] | None = None) -> dict[str, Path]:
    """PNGs under ``root/images/<split>2014`` plus a Karpathy JSON and an equivalent JSONL.

    Each image has two captions; ids: ``imgid`` 0.., ``sentid`` 0...
    """
    per_split = per_split or {"train": 6, "val": 3, "test": 3}
    images, rows = [], []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    index = sentence = 0
    for split, count in per_split.items():
        for _ in range(count):
            color, shape = combos[index % len(combos)]
            filename = f"img_{index:03d}.png"
            folder = "train2014" if split == "train" else "val2014"
            draw_image(root / "images" / folder / filename, color, shape)
            captions = [f"a {color} {shape}", f"a photo of a {color} {shape}"]
            images.append({"filepath": folder, "filename": filename, "imgid": index, "split": split,
                           "sentids": [sentence, sentence + 1],
                           "sentences": [{"raw": c, "sentid": sentence + i} for i, c in enumerate(captions)]})
            for caption in captions:
                rows.append({"image": f"{folder}/{filename}", "caption": caption, "image_id": index, "split": split})
            index += 1
            sentence += 2
    karpathy = root / "dataset_test.json"
    karpathy.write_text(json.dumps({"dataset": "test", "images": images}))
    jsonl = root / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return {"karpathy": karpathy, "jsonl": jsonl, "image_root": root / "images"}


PASSAGES = [
    ("p0", "France", "paris is the capital of france"),
    ("p1", "Hamlet", "hamlet was wrote by shakespeare"),
    ("p2", "Nile", "the nile is the longest river in the world"),
    ("p3", "Everest", "mount everest is the highest mountain in the world"),
    ("p4", "Jupiter", "jupiter is the largest planet"),
    ("p5", "Cats", "a small cat and a big dog"),
]
QUERIES = [
    ("q0", "what is the capital of france"),
    ("q1", "who wrote hamlet"),
    ("q2", "what is the longest river"),
    ("q3", "what is the highest mountain"),
    ("q4", "what is the largest planet"),
    ("q5", "capital city of france"),
]


def write_beir(root: Path, with_scores: bool = True) -> Path:
    """A six-passage BEIR folder: corpus, queries, qrels (train/dev/test) and train triples."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "title": t, "text": x}) for i, t, x in PASSAGES) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": x}) for i, x in QUERIES) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    gold = {"q0": "p0", "q1": "p1", "q2": "p2", "q3": "p3", "q4": "p4", "q5": "p0"}
    for split, queries in (("train", ["q0", "q1", "q2", "q3", "q4"]), ("dev", ["q2", "q3", "q5"]),
                           ("test", ["q0", "q1", "q4", "q5"])):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{gold[q]}\t1" for q in queries]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    rows = []
    rng = np.random.default_rng(0)
    for q in ["q0", "q1", "q2", "q3", "q4"]:
        negatives = [p for p, _, _ in PASSAGES if p != gold[q]][:3]
        row = {"query_id": q, "positive_ids": [gold[q]], "negative_ids": negatives}
        if with_scores:
            row["teacher_scores"] = {gold[q]: 8.0, **{n: float(rng.normal()) for n in negatives}}
        rows.append(row)
    (root / "train_triples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def write_tied_beir(root: Path, seed: int = 0) -> Path:
    """A BEIR folder whose passages repeat (same text, other id), whose numeric ids are in neither numeric nor string
    order in the file, and whose queries share words with many passages: scores tie often."""
    import random

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS[:12]) for _ in range(3)) for _ in range(30)]
    texts += [rng.choice(texts) for _ in range(30)]  # duplicate passages
    ids = rng.sample(range(1, 400), len(texts))       # numeric: "9" > "100" as strings
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n"
                                               for i, t in zip(ids, texts)))
    queries = {f"q{n}": " ".join(rng.choice(WORDS[:12]) for _ in range(2)) for n in range(25)}
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{i}\t{rng.randint(0, 2)}" for q in queries
                                              for i in rng.sample(ids, rng.randint(1, 4))]
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- classes recipes load
class PauseAfterStep(L.Callback):
    """From global step ``step`` on, writes ``marker`` and sleeps ``pause`` seconds after every batch.

    A test process waits for the marker and sends a signal while the run is paused mid-epoch.
    """

    def __init__(self, step: int, marker: str, pause: float = 0.5) -> None:
        self.step = step
        self.marker = Path(marker)
        self.pause = pause

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            if not self.marker.exists():
                self.marker.write_text(str(trainer.global_step))
            time.sleep(self.pause)


class SendSignal(L.Callback):
    """Sends ``signum`` (a number, or a name such as ``SIGTERM``) to this process after global step ``at_batch``."""

    def __init__(self, at_batch: int, signum: int | str) -> None:
        import signal

        self.at_batch = at_batch
        self.signum = int(signal.Signals[signum]) if isinstance(signum, str) else int(signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.at_batch:
            os.kill(os.getpid(), self.signum)


class ScoreOnlyTeacher(Teacher):
    """A teacher that scores pairs but exposes no embeddings (like a plain cross-encoder).

    ``weights`` is accepted and ignored, so that it can replace a preset that sets it.
    """

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        return self.bias.expand(next(iter(a.values())).shape[0])


class LexicalTeacher(Teacher):
    """A text teacher that scores a (query, passage) pair by the query tokens the passage contains: on
    :func:`write_beir`'s data it ranks each query's gold passage first, as a strong re-ranker would.

    Reads the ``text_ids`` / ``text_mask`` a BEIR data module with a ``teacher_tokenizer`` gives; the arguments
    of the text cross-encoder preset are accepted and ignored, so that it can replace one.
    """

    def __init__(self, pretrained: str | None = None, max_length: int = 512, label_index: int = 0) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        query, passage = a["text_ids"], b["text_ids"]
        shared = (query.unsqueeze(2) == passage.unsqueeze(1)) & b["text_mask"].bool().unsqueeze(1)
        return (shared.any(2) & a["text_mask"].bool()).sum(1).float() + self.bias


class ScaledTeacher(ShapesCrossEncoder):
    """The tiny shapes teacher with its scores multiplied by ``scale``."""

    def __init__(self, scale: float = 1e4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def fuse(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        return super().fuse(image_tokens, text_tokens, attention_mask) * self.scale


class BrokenAt(DistillationLoss):
    """InfoNCE that goes wrong at the listed calls (0-based), in one of three ways:

    ``nan_loss``: the loss value is NaN; ``nan_input``: the similarity fed to InfoNCE is NaN (its input
    check raises); ``inf_grad``: the value stays finite but the gradient is not.
    """

    requires_teacher: ClassVar[bool] = False
    requires_teacher_scores: ClassVar[bool] = False

    def __init__(self, calls: list[int], how: str = "nan_loss") -> None:
        super().__init__()
        self.calls = set(calls)
        self.how = how
        self.count = 0

    def forward(self, inputs: LossInputs) -> Tensor:
        call, self.count = self.count, self.count + 1
        similarity = inputs.similarity
        if call in self.calls and self.how == "nan_input":
            similarity = similarity * float("nan")
        loss = symmetric_infonce_loss(similarity, inputs.positive_mask, inputs.logit_scale)
        if call in self.calls and self.how == "nan_loss":
            return loss * float("nan")
        if call in self.calls and self.how == "inf_grad":
            return loss + torch.sqrt((similarity * 0.0).sum())  # value unchanged, d sqrt(x)/dx at 0 is inf
        return loss


# ---------------------------------------------------------------------------------------------- student specs
BERT_TINY = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64)

DENSE_SPEC: dict[str, Any] = {
    "class_path": "distill.students.DualEncoder",
    "init_args": {
        "embed_dim": 16,
        "tower_a": {"class_path": "distill.students.TimmImageTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.TransformersTextTower", "init_args": {"config": BERT_TINY}},
    },
}

SPARSE_SPEC: dict[str, Any] = {
    "class_path": "distill.students.sparse.SparseDualEncoder",
    "init_args": {
        "tower_a": {"class_path": "distill.students.sparse.TimmTokenTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.sparse.MLMTextTower", "init_args": {"config": BERT_TINY}},
    },
}

TINY_STUDENT_OVERRIDES = [
    "--model.init_args.student.init_args.tower_a.init_args.model_name", "resnet10t",
    "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size", "32",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_hidden_layers", "1",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads", "2",
    "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size", "64",
]

TINY_DATA_OVERRIDES = [
    "--data.init_args.num_train", "32", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
    "--data.init_args.image_size", "32", "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8",
]

QUIET_TRAINER = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def build(spec: dict[str, Any]) -> Any:
    return instantiate(spec).eval()


# ---------------------------------------------------------------------------------------------- scale and distributed
BERT_NO_DROPOUT = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
DATA = dict(num_val=8, num_test=8, image_size=32, eval_batch_size=16)


class PooledConvTower(Tower):
    """A batch-independent image tower (no BatchNorm, no dropout): conv, GELU, global mean pool."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(3, width, kernel_size=4, stride=4)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return nn.functional.gelu(self.conv(inputs["pixel_values"])).mean(dim=(2, 3))


def batch_independent_student() -> DualEncoder:
    """A student whose embeddings of an item do not depend on the rest of the batch."""
    return DualEncoder(PooledConvTower(), TransformersTextTower(config=dict(BERT_NO_DROPOUT)), embed_dim=16)


class PatchConvTower(Tower):
    """A batch-independent token image tower: one GELU conv patch embedding, ``[B, (H/8)(W/8), width]`` tokens."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(3, width, kernel_size=8, stride=8)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return nn.functional.gelu(self.conv(inputs["pixel_values"])).flatten(2).transpose(1, 2)


def batch_independent_late_student(similarity: str = "filip") -> nn.Module:
    """A late-interaction student whose token embeddings of an item do not depend on the rest of the batch."""
    from distill.students import LateInteractionEncoder, TransformersTokenTower

    return LateInteractionEncoder(PatchConvTower(), TransformersTokenTower(config=dict(BERT_NO_DROPOUT)), embed_dim=16,
                                  similarity=similarity)  # type: ignore[arg-type]


def all_losses() -> dict[str, Any]:
    return {
        "infonce": InfoNCE(),
        "cprd": CPRD(temperature=0.1, rule="top_m", top_m=3),
        "dcd": DCD(student_temperature=0.1, num_hard_negatives=2),
        "kl": LogitKL(student_temperature=0.1),
        "margin_mse": MarginMSE(),
    }


class FirstCaptionShapes(ShapesDataModule):
    """The shapes data with one train item per image (its first caption), so that a batch holding the
    whole split has every image once, in both directions."""

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        keep = [row for row in range(len(dataset)) if int(dataset.caption_ids[row]) % self.captions_per_image == 0]
        loader = super().train_dataloader()
        return DataLoader(Subset(dataset, keep), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed), collate_fn=loader.collate_fn)


def tiny_shapes(num_train: int, batch_size: int, cls: type[ShapesDataModule] = ShapesDataModule) -> ShapesDataModule:
    datamodule = cls(num_train=num_train, batch_size=batch_size, **DATA)
    datamodule.setup("fit")
    return datamodule


def pair_batch(datamodule: ShapesDataModule, size: int) -> dict[str, Any]:
    """The first ``size`` train items, collated, pixels in float64."""
    dataset = datamodule.dataset("train")
    batch: dict[str, Any] = dict(collate_pairs([dataset[i] for i in range(size)], datamodule.pad_token_id))
    batch["a"] = {"pixel_values": batch["a"]["pixel_values"].double()}
    return batch


def synthetic_cache_fields(batch: dict[str, Any], k: int, seed: int = 0) -> dict[str, Tensor]:
    """Deterministic ``batch["teacher_cache"]`` fields: each row lists k ids, most of them present in the batch
    (other rows' b / a ids), some absent (ids no item has), with random teacher scores."""
    generator = torch.Generator().manual_seed(seed)
    size = batch["a_id"].shape[0]
    fields: dict[str, Tensor] = {}
    for direction, ids in (("a2b", batch["b_id"]), ("b2a", batch["a_id"])):
        other = torch.stack([torch.roll(torch.arange(size), -(shift + 1)) for shift in range(k)], dim=1)
        candidate = ids[other]
        absent = torch.rand(size, k, generator=generator) < 0.2
        candidate = torch.where(absent, torch.full_like(candidate, 10_000_000), candidate)
        fields[f"{direction}_ids"] = candidate
        fields[f"{direction}_scores"] = torch.randn(size, k, generator=generator)
    fields["pair_scores"] = torch.randn(size, generator=generator) + 2.0
    return fields


def distributed_module(teacher_cache: str | None = None) -> DistillationModule:
    """The module of the distributed test: seeded, float64, no dropout, batch-independent student."""
    torch.manual_seed(0)
    student = batch_independent_student()
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    losses = {"infonce": InfoNCE(), "cprd": CPRD(temperature=0.1, top_m=3), "kl": LogitKL(student_temperature=0.1)}
    candidates = CachedCandidates(teacher_cache) if teacher_cache else InBatchNegatives()
    module = DistillationModule(student=student, teacher=teacher, losses=losses, num_hard_negatives=3,
                                candidates=candidates, evaluator=RecallEvaluator(diagnostics=False))
    return module.double()


def local_rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    """Rows of a batch (nested dicts of tensors); text inputs are re-trimmed to the rows' longest item."""
    def take(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: take(item) for key, item in value.items()}
        return value[rows]

    local = take(batch)
    length = int(local["b"]["attention_mask"].sum(1).max())
    local["b"] = {key: value[:, :length] for key, value in local["b"].items()}
    return local


class StepModule(nn.Module):
    """``forward(batch) = module.training_step(batch)``: the wrapping Lightning's DDP strategy also uses."""

    def __init__(self, module: DistillationModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.module.training_step(batch, 0)


def student_gradients(module: DistillationModule) -> dict[str, Tensor]:
    return {name: param.grad.detach().clone() for name, param in module.student.named_parameters()
            if param.grad is not None}


def ddp_worker(rank: int, world: int, port: int, out_dir: str, full_size: int) -> None:
    """One rank of the distributed test: local batch = rows ``[rank*B, (rank+1)*B)`` of the full batch; a DDP
    step per mode ("live" teacher, "cached" scores); rank 0 saves the loss and student gradients."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        datamodule = tiny_shapes(num_train=full_size, batch_size=full_size)
        full = pair_batch(datamodule, full_size)
        full["teacher_cache"] = synthetic_cache_fields(full, k=4)
        size = full_size // world
        local = local_rows(full, slice(rank * size, (rank + 1) * size))
        results: dict[str, Any] = {}
        for mode in ("live", "cached"):
            module = distributed_module(teacher_cache="unused" if mode == "cached" else None)
            wrapped = DistributedDataParallel(StepModule(module), find_unused_parameters=True)
            loss = wrapped(local)
            loss.backward()
            results[mode] = {"loss": loss.detach(), "grads": student_gradients(module),
                             "ddp_parameters": sum(1 for p in wrapped.parameters() if p.requires_grad)}
        if rank == 0:
            torch.save(results, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- text, distributed
def text_module(teacher_dir: str) -> DistillationModule:
    """Query-passage distillation as the MS MARCO recipe composes it: a tiny BERT dual encoder (no dropout),
    a tiny cross-encoder teacher, in-batch + listed negatives, InfoNCE + MarginMSE + KL; float64."""
    from distill.evaluation import QrelsEvaluator
    from distill.students import TextDualEncoder
    from distill.teachers import TextCrossEncoderTeacher
    from distill.training.candidates import ListedNegatives

    torch.manual_seed(0)
    student = TextDualEncoder(config=dict(BERT_NO_DROPOUT, vocab_size=len(BERT_VOCAB)), pooling="mean")
    teacher = TextCrossEncoderTeacher(pretrained=teacher_dir, max_length=64)
    losses = {"infonce": InfoNCE(), "margin_mse": MarginMSE(directions="a2b"), "kl": LogitKL(student_temperature=0.1)}
    module = DistillationModule(student=student, teacher=teacher, losses=losses, num_hard_negatives=2,
                                candidates=[InBatchNegatives(), ListedNegatives()],
                                evaluator=QrelsEvaluator(diagnostics=False))
    return module.double()


def text_batch(data_dir: str, tokenizer_dir: str, teacher_dir: str, size: int) -> dict[str, Any]:
    """The first ``size`` training items of a BEIR folder with one listed negative each, collated."""
    from distill.data import BeirTextDataModule

    datamodule = BeirTextDataModule(data_dir=data_dir, student_tokenizer=tokenizer_dir, teacher_tokenizer=teacher_dir,
                                    train_file="train_triples.jsonl", num_negatives=1, passage_max_length=32,
                                    teacher_max_length=32)
    datamodule.setup("fit")
    dataset = datamodule.train_dataloader().dataset
    return datamodule.collator.train([dataset[i] for i in range(size)])


def text_ddp_worker(rank: int, world: int, port: int, out_dir: str, data_dir: str, tokenizer_dir: str,
                    teacher_dir: str, full_size: int) -> None:
    """One rank of the text distributed test: rows ``[rank*B, (rank+1)*B)`` of the full batch, one DDP step."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = text_batch(data_dir, tokenizer_dir, teacher_dir, full_size)
        size = full_size // world
        rows = slice(rank * size, (rank + 1) * size)

        def take(value: Any) -> Any:
            return {key: take(item) for key, item in value.items()} if isinstance(value, dict) else value[rows]

        module = text_module(teacher_dir)
        wrapped = DistributedDataParallel(StepModule(module), find_unused_parameters=True)
        loss = wrapped(take(full))
        loss.backward()
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": student_gradients(module)}, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- smoke runs
def fit_and_check(args: list[str]) -> Any:
    """Run ``fit`` through the recipe loader and check what a smoke run must show: every loss term logged and
    finite, the trainable weights changed, the teacher (if any) unchanged, validation in range when it ran."""
    import math

    from distill.cli.recipe import DistillCLI

    cli = DistillCLI(args=["--config", *args[args.index("--config") + 1:]] if args[0] == "--config" else
                     [arg for arg in args if arg != "fit"], run=False)
    model = cli.model
    trained = model.student if hasattr(model, "student") else model.teacher
    before = {k: v.detach().clone() for k, v in trained.state_dict().items() if v.dtype.is_floating_point}
    teacher = getattr(model, "teacher", None) if hasattr(model, "student") else None
    frozen = {k: v.detach().clone() for k, v in teacher.state_dict().items()} if teacher is not None else {}
    cli.trainer.fit(model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])), metrics
    for name in getattr(model, "losses", {}):
        assert math.isfinite(float(metrics[f"train/loss/{name}"])), name
    after = trained.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no trainable weight changed"
    if teacher is not None:
        # unchanged (cast once to its own precision, e.g. bf16, but never trained)
        assert all(torch.equal(frozen[k].to(v.dtype), v) for k, v in teacher.state_dict().items()), "teacher changed"
    for key in ("val/rsum", "val/ndcg@10"):
        if key in metrics:
            assert 0.0 <= float(metrics[key]) <= (600.0 if key == "val/rsum" else 100.0), (key, metrics[key])
    return cli


class LogLines(logging.Handler):
    """Collects the messages of the records a logger emits (``logger.addHandler(LogLines())``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def kill_after_first_shard(command: list[str], env: dict[str, str], cwd: Path, out: Path) -> str:
    """Run ``cache-teacher`` ``command`` with a pause after each shard, SIGKILL it once ``out`` holds a shard (at
    most 120 s), and return its stderr (for the assertion message when no shard appeared)."""
    import signal
    import subprocess

    from distill.cache.build import PAUSE_ENV

    process = subprocess.Popen(command, env={**env, PAUSE_ENV: "60"}, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    return stderr.decode()[-2000:]


def load_benchmark(script: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``benchmarks/<script>.py`` as a module, imported the way its tests need it: one BLAS/OpenMP thread and a
    passive wait policy (the scripts set these on import; ``monkeypatch`` restores the test process's own), the
    benchmarks folder on ``sys.path`` (scripts import each other) and the module in ``sys.modules`` (dataclasses
    look their module up while the class is built)."""
    import importlib.util
    import sys

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"{script}_benchmark", REPO_ROOT / "benchmarks" / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def late_spec(text_config: dict[str, Any] | None = None, embed_dim: int = 16) -> dict[str, Any]:
    """A late-interaction student spec: a ResNet-10 patch-token tower (stride 16) and a tiny BERT token tower."""
    return {
        "class_path": "distill.students.LateInteractionEncoder",
        "init_args": {
            "embed_dim": embed_dim,
            "tower_a": {"class_path": "distill.students.sparse.TimmTokenTower",
                        "init_args": {"model_name": "resnet10t", "model_kwargs": {"output_stride": 16}}},
            "tower_b": {"class_path": "distill.students.TransformersTokenTower",
                        "init_args": {"config": text_config if text_config is not None else BERT_TINY}},
        },
    }

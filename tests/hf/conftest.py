"""Tiny Hugging Face models, processors and data sets written to temporary folders (no network).

Every model is the exact class a preset loads, randomly initialised from a tiny config and saved
with ``save_pretrained`` next to a tokenizer / processor built offline from a small vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    return TinyModels(blip=save_blip(root / "blip"), vilt=save_vilt(root / "vilt"), clip=save_clip(root / "clip"),
                      bert=save_bert(root / "bert"), cross_encoder=save_cross_encoder(root / "cross-encoder"))


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


@pytest.fixture
def image_text_data(tmp_path: Path) -> dict[str, Path]:
    return write_image_text_data(tmp_path / "data")


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "beir")

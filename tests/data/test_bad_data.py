"""Broken data: each case fails with a message naming the file and field, or is counted and logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from distill.data import BeirTextDataModule, PairedImageTextDataModule, ShapesDataModule
from distill.data.common import DataError
from distill.evaluation import retrieval_metrics


def paired(data: dict[str, Path], tokenizer_dir: Path, annotations: str = "karpathy",
           **kwargs: object) -> PairedImageTextDataModule:
    args: dict[str, object] = dict(annotations=str(data[annotations]), image_root=str(data["image_root"]),
                                   student_tokenizer=str(tokenizer_dir), image_size=16, batch_size=4,
                                   eval_batch_size=8)
    args.update(kwargs)
    module = PairedImageTextDataModule(**args)  # type: ignore[arg-type]
    module.setup("fit")
    return module


def beir(data_dir: Path, tokenizer_dir: Path, **kwargs: object) -> BeirTextDataModule:
    args: dict[str, object] = dict(data_dir=str(data_dir), student_tokenizer=str(tokenizer_dir),
                                   train_file="train_triples.jsonl", batch_size=2, eval_batch_size=4, num_negatives=1)
    args.update(kwargs)
    module = BeirTextDataModule(**args)  # type: ignore[arg-type]
    module.setup("fit")
    return module


def karpathy(data: dict[str, Path]) -> dict:
    return json.loads(data["karpathy"].read_text())


def image_path(data: dict[str, Path], index: int) -> Path:
    image = karpathy(data)["images"][index]
    return data["image_root"] / image["filepath"] / image["filename"]


# ------------------------------------------------------------------------------------------- images
def test_missing_image_is_named_or_skipped(image_data: dict[str, Path], tokenizer_dir: Path) -> None:
    image_path(image_data, 1).unlink()
    for annotations, field in (("karpathy", r"images\[1\] 'img_001\.png': filename"),
                               ("jsonl", r"line 3 'train2014/img_001\.png': filename")):
        with pytest.raises(DataError, match=rf"image file '.*img_001\.png' not found \(pairs\.jsonl: {field}"
                           if annotations == "jsonl" else rf"img_001\.png' not found \(dataset_test\.json: {field}"):
            paired(image_data, tokenizer_dir, annotations)
    module = paired(image_data, tokenizer_dir, on_bad_item="skip")
    assert module.bad_items.counts["missing_image"] == 1
    assert len(module.dataset("train")) == 6  # 3 of 4 images, 2 captions each


@pytest.mark.parametrize("how", ["truncated", "not_an_image"])
def test_truncated_or_non_image_file(how: str, image_data: dict[str, Path], tokenizer_dir: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    path = image_path(image_data, 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if how == "truncated" else b"caption text saved with a .png name")
    with pytest.raises(DataError, match=r"cannot decode image file '.*img_001\.png' \(dataset_test\.json: "
                                        r"images\[1\].*replace or remove the file.*on_bad_item: skip"):
        paired(image_data, tokenizer_dir, verify_images=True)
    lazy = paired(image_data, tokenizer_dir)  # without verify_images: found when the item is loaded
    with pytest.raises(DataError, match=r"cannot decode image file '.*img_001\.png'"):
        lazy.dataset("train")[2]
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        skipping = paired(image_data, tokenizer_dir, on_bad_item="skip")
        batch = skipping.collator([skipping.dataset("train")[i] for i in range(4)])
    assert batch["a_id"].tolist() == [0, 0]  # items 2 and 3 (image 1) were dropped from the batch
    assert skipping.bad_items.counts["unreadable_image"] == 2 and "skipping an item" in caplog.text


# ------------------------------------------------------------------------------------------- captions
@pytest.mark.parametrize("caption", ["", "   \t "])
def test_empty_or_whitespace_caption(caption: str, image_data: dict[str, Path], beir_data: Path,
                                     tokenizer_dir: Path) -> None:
    spec = karpathy(image_data)
    spec["images"][1]["sentences"][0]["raw"] = caption
    image_data["karpathy"].write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"empty caption \(blank or whitespace only\): dataset_test\.json: "
                                        r"images\[1\] 'img_001\.png' sentences\[0\]\.raw"):
        paired(image_data, tokenizer_dir)
    assert len(paired(image_data, tokenizer_dir, on_bad_item="skip").dataset("train")) == 7
    lines = image_data["jsonl"].read_text().splitlines()
    row = json.loads(lines[2])
    row["caption"] = caption
    lines[2] = json.dumps(row)
    image_data["jsonl"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"empty caption .*pairs\.jsonl: line 3 'caption'"):
        paired(image_data, tokenizer_dir, "jsonl")
    queries = beir_data / "queries.jsonl"
    queries.write_text(queries.read_text().replace("who wrote hamlet", json.dumps(caption)[1:-1]))
    with pytest.raises(DataError, match=r"train_triples\.jsonl: line 2: query 'q1' has an empty text in "
                                        r"queries\.jsonl"):
        beir(beir_data, tokenizer_dir)


def test_long_captions_are_truncated_and_counted(image_data: dict[str, Path], tokenizer_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    module = paired(image_data, tokenizer_dir, max_length=4)  # "[CLS] a red circle [SEP]" is 5 tokens
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        batch = next(iter(module.val_dataloader()))
    assert batch["b"]["input_ids"].shape[1] == 4
    assert module.student_truncation.count == 4  # every caption of the val split
    assert ("PairedImageTextDataModule: 4 captions tokenised so far were longer than data.init_args.max_length=4 "
            "tokens and were truncated" in caplog.text)


def test_long_passages_are_truncated_and_counted(beir_data: Path, tokenizer_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    module = beir(beir_data, tokenizer_dir, passage_max_length=6, val_split=None, test_split=None)
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        batch = next(iter(module.train_dataloader()))
    assert batch["b"]["input_ids"].shape[1] == 6
    assert module.truncation["passage"].count > 0 and module.truncation["query"].count == 0
    assert "passages tokenised so far were longer than data.init_args.passage_max_length=6" in caplog.text


def test_shapes_captions_are_never_truncated() -> None:
    with pytest.raises(ValueError, match=r"ShapesDataModule: \d+ of \d+ captions are longer than "
                                         r"data.init_args.max_length=8 tokens .*set data.init_args.max_length to at "
                                         r"least \d+"):
        ShapesDataModule(num_train=4, num_val=2, num_test=2, image_size=16, max_length=8).setup("fit")


# ------------------------------------------------------------------------------------------- ids
def test_duplicate_image_and_caption_ids(image_data: dict[str, Path], tokenizer_dir: Path) -> None:
    original = karpathy(image_data)
    spec = json.loads(json.dumps(original))
    spec["images"][2]["imgid"] = spec["images"][0]["imgid"]
    image_data["karpathy"].write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"images\[2\] repeats imgid 0 of dataset_test\.json: images\[0\]: each image "
                                        r"needs its own imgid.*on_bad_item: skip"):
        paired(image_data, tokenizer_dir)
    assert paired(image_data, tokenizer_dir, on_bad_item="skip").bad_items.counts["duplicate_id"] == 1
    spec = json.loads(json.dumps(original))
    spec["images"][1]["sentences"][1]["sentid"] = spec["images"][0]["sentences"][0]["sentid"]
    image_data["karpathy"].write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"images\[1\] sentences\[1\] repeats sentid 0 of .*images\[0\] sentences\[0\]"):
        paired(image_data, tokenizer_dir)
    rows = [json.loads(line) for line in image_data["jsonl"].read_text().splitlines()]
    rows[2]["image_id"] = 0  # line 3 names img_001.png, but image_id 0 is img_000.png
    image_data["jsonl"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl: line 3: image_id 0 names 'train2014/img_001\.png', but line 1 "
                                        r"gave it to 'train2014/img_000\.png'"):
        paired(image_data, tokenizer_dir, "jsonl")


def test_duplicate_passage_id(beir_data: Path, tokenizer_dir: Path) -> None:
    corpus = beir_data / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "p2", "text": "again"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 7 repeats _id 'p2'"):
        beir(beir_data, tokenizer_dir)


@pytest.mark.parametrize("value", ["NaN", "Infinity", '"high"'])
def test_a_teacher_score_that_is_not_a_finite_number(beir_data: Path, tokenizer_dir: Path, value: str) -> None:
    """A NaN score in a training file used to be dropped with its negative without a word."""
    triples = beir_data / "train_triples.jsonl"
    lines = triples.read_text().splitlines()
    record = json.loads(lines[0])
    key = str(record["negative_ids"][0])
    lines[0] = json.dumps({**record, "teacher_scores": {"__key__": 0.0}}).replace('{"__key__": 0.0}',
                                                                               f'{{"{key}": {value}}}')
    triples.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"train_triples\.jsonl: line 1: teacher_scores\['{key}'\] is .*: every "
                                        r"teacher score is a finite number"):
        beir(beir_data, tokenizer_dir)


# ------------------------------------------------------------------------------------------- evaluation
def test_item_without_a_positive_in_evaluation(beir_data: Path, tokenizer_dir: Path) -> None:
    scores = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"1 a item\(s\) have no positive b item: every query needs a gold answer"):
        retrieval_metrics(scores, torch.tensor([0, 0, 1, 1]))  # a item 2 owns no b item
    (beir_data / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\tp2\t1\nq3\tp3\t0\n")
    # BEIR / pytrec_eval: a judged query without a relevant passage is kept (it scores 0), not an error.
    assert beir(beir_data, tokenizer_dir).relevance("val") == {2: {2: 1.0}, 3: {3: 0.0}}


# ------------------------------------------------------------------------------------------- files
def test_karpathy_json_without_split(image_data: dict[str, Path], tokenizer_dir: Path) -> None:
    spec = karpathy(image_data)
    del spec["images"][3]["split"]
    image_data["karpathy"].write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"dataset_test\.json: images\[3\] has no 'split' field \(train, restval, val "
                                        r"or test; the Karpathy-split JSON has one per image\)"):
        paired(image_data, tokenizer_dir)


def test_non_utf8_text(image_data: dict[str, Path], beir_data: Path, tokenizer_dir: Path) -> None:
    text = image_data["karpathy"].read_text().replace("a red circle", "a red caf\u00e9 circle")
    image_data["karpathy"].write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=r"dataset_test\.json' line 1 is not UTF-8 text \(byte 0xe9 at byte offset "
                                        r"\d+ of the line\): re-encode the file as UTF-8"):
        paired(image_data, tokenizer_dir)
    lines = image_data["jsonl"].read_text().splitlines()
    lines[4] = lines[4].replace("red", "r\u00fcd")
    image_data["jsonl"].write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"pairs\.jsonl' line 5 is not UTF-8 text \(byte 0xfc"):
        paired(image_data, tokenizer_dir, "jsonl")
    queries = beir_data / "queries.jsonl"
    queries.write_bytes(queries.read_text().replace("hamlet", "h\u00e4mlet").encode("latin-1"))
    with pytest.raises(DataError, match=r"queries\.jsonl' line 2 is not UTF-8 text \(byte 0xe4"):
        beir(beir_data, tokenizer_dir)


def test_missing_data_file_through_the_cli_is_one_line(image_data: dict[str, Path], tokenizer_dir: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import error_line, fit_args

    line = error_line(capsys, fit_args(
        "shapes-infonce.yaml", tmp_path, "--data=distill.data.PairedImageTextDataModule",
        f"--data.init_args.annotations={tmp_path / 'nope.json'}",
        f"--data.init_args.image_root={image_data['image_root']}",
        f"--data.init_args.student_tokenizer={tokenizer_dir}", "--data.init_args.image_size=32"), status=2)
    assert line == f"distill: error: data.init_args.annotations: file '{tmp_path / 'nope.json'}' not found"

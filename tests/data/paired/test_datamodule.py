"""PairedImageTextDataModule: Karpathy JSON / JSONL, student and teacher views, bad items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.data import PairedImageTextDataModule
from distill.data.common import DataError

from tests.helpers import IMAGE_SIZE


def _module(data: dict[str, Path], tiny_models, **kwargs) -> PairedImageTextDataModule:
    args = dict(annotations=str(data["karpathy"]), image_root=str(data["image_root"]),
                student_processor=str(tiny_models.clip), batch_size=4, eval_batch_size=8)
    args.update(kwargs)
    module = PairedImageTextDataModule(**args)
    module.setup("fit")
    return module


def test_karpathy_batches_carry_teacher_views(image_text_data, tiny_models) -> None:
    module = _module(image_text_data, tiny_models, teacher_processor=str(tiny_models.blip))
    assert {name: len(module.dataset(name)) for name in ("train", "val", "test")} == {"train": 12, "val": 6, "test": 6}
    batch = next(iter(module.train_dataloader()))
    assert batch["a"]["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["teacher_a"]["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert not torch.allclose(batch["a"]["pixel_values"], batch["teacher_a"]["pixel_values"])  # other mean/std
    assert batch["b"]["input_ids"].shape[0] == batch["teacher_b"]["input_ids"].shape[0] == 4
    assert int(batch["teacher_b"]["input_ids"][0, 0]) == 2  # the BERT tokenizer's [CLS]
    val = next(iter(module.val_dataloader()))
    assert val["a_id"].tolist() == [6, 6, 7, 7, 8, 8] and val["b_id"].tolist() == list(range(12, 18))


@pytest.mark.parametrize("evaluates_teacher", [False, True])
def test_evaluation_batches_carry_teacher_pixels_only_when_the_teacher_ranks(image_text_data, tiny_models,
                                                                            evaluates_teacher: bool) -> None:
    """Evaluation keeps embeddings, so its batches leave the teacher's pixels out unless the module ranks with
    the teacher's own embeddings; re-ranking still fetches the teacher's view of the items it scores."""
    from types import SimpleNamespace

    from distill.data.batch import teacher_views

    module = _module(image_text_data, tiny_models, teacher_processor=str(tiny_models.blip))
    module.trainer = SimpleNamespace(lightning_module=SimpleNamespace(evaluates_teacher_embeddings=evaluates_teacher))
    val = next(iter(module.val_dataloader()))
    assert ("teacher_a" in val) is evaluates_teacher and "teacher_b" in val  # captions stay: a few bytes each
    store = module.item_store("val")
    pixels = store.load_a(torch.tensor([7, 6]))["pixel_values"]
    module.trainer = None
    reference = teacher_views(next(iter(module.val_dataloader())))[0]["pixel_values"]
    assert torch.equal(pixels, reference[[2, 0]])  # images 7 and 6 in the teacher's normalisation


def test_jsonl_matches_karpathy(image_text_data, tiny_models) -> None:
    karpathy = _module(image_text_data, tiny_models)
    jsonl = _module(image_text_data, tiny_models, annotations=str(image_text_data["jsonl"]))
    first, second = next(iter(karpathy.val_dataloader())), next(iter(jsonl.val_dataloader()))
    assert torch.equal(first["a"]["pixel_values"], second["a"]["pixel_values"])
    assert torch.equal(first["b"]["input_ids"], second["b"]["input_ids"])
    assert torch.equal(first["a_id"], second["a_id"])
    assert "teacher_a" not in first and "teacher_b" not in first  # no teacher processor given


def test_same_processor_gives_no_teacher_views(image_text_data, tiny_models) -> None:
    module = _module(image_text_data, tiny_models, teacher_processor=str(tiny_models.clip))
    assert module.teacher_image is None and module.teacher_tokenizer is None


def test_builtin_student_transform_and_tokenizer(image_text_data, tiny_models) -> None:
    module = _module(image_text_data, tiny_models, student_processor=None, student_tokenizer=str(tiny_models.bert),
                     image_size=24, teacher_processor=str(tiny_models.vilt), teacher_image_canvas=40)
    batch = next(iter(module.train_dataloader()))
    assert batch["a"]["pixel_values"].shape == (4, 3, 24, 24)
    assert batch["teacher_a"]["pixel_values"].shape == (4, 3, 40, 40)
    assert batch["teacher_a"]["pixel_mask"].sum().item() == 4 * IMAGE_SIZE * IMAGE_SIZE
    assert "teacher_b" in batch  # same vocabulary, but ViLT's tokenizer has its own 40-token limit
    same = _module(image_text_data, tiny_models, student_processor=None, student_tokenizer=str(tiny_models.bert),
                   teacher_tokenizer=str(tiny_models.bert))
    assert same.teacher_tokenizer is None
    with pytest.raises(ValueError, match="student_tokenizer"):
        PairedImageTextDataModule(annotations=str(image_text_data["karpathy"]),
                                  image_root=str(image_text_data["image_root"]))


def test_each_image_is_decoded_once(image_text_data, tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.data.paired.datamodule as paired

    module = _module(image_text_data, tiny_models, teacher_processor=str(tiny_models.blip))
    calls: list[str] = []
    original = paired.Image.open

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(paired.Image, "open", counting)
    item = module.dataset("train")[0]
    assert len(calls) == 1 and "pixels" in item and "teacher_pixels" in item


def _break(data: dict[str, Path], how: str) -> None:
    spec = json.loads(data["karpathy"].read_text())
    image = spec["images"][1]
    path = data["image_root"] / image["filepath"] / image["filename"]
    if how == "missing":
        path.unlink()
    elif how == "unreadable":
        path.write_bytes(b"not a png")
    elif how == "empty":
        image["sentences"][0]["raw"] = "   "
        data["karpathy"].write_text(json.dumps(spec))


def test_missing_image_is_an_error_naming_file_and_field(image_text_data, tiny_models) -> None:
    _break(image_text_data, "missing")
    with pytest.raises(DataError, match=r"img_001\.png' not found.*images\[1\].*filename.*on_bad_item"):
        _module(image_text_data, tiny_models)
    module = _module(image_text_data, tiny_models, on_bad_item="skip")
    assert module.bad_items.counts["missing_image"] == 1 and len(module.dataset("train")) == 10


def test_empty_caption_is_an_error_or_a_counted_skip(image_text_data, tiny_models) -> None:
    _break(image_text_data, "empty")
    with pytest.raises(DataError, match=r"empty caption.*images\[1\].*sentences\[0\]\.raw"):
        _module(image_text_data, tiny_models)
    module = _module(image_text_data, tiny_models, on_bad_item="skip")
    assert module.bad_items.counts["empty_caption"] == 1 and len(module.dataset("train")) == 11


def test_unreadable_image(image_text_data, tiny_models, caplog: pytest.LogCaptureFixture) -> None:
    _break(image_text_data, "unreadable")
    with pytest.raises(DataError, match=r"cannot decode image file .*img_001\.png"):
        _module(image_text_data, tiny_models, verify_images=True)
    module = _module(image_text_data, tiny_models)  # found when the item is loaded
    with pytest.raises(DataError, match=r"cannot decode image file .*img_001\.png"):
        module.dataset("train")[2]
    skipping = _module(image_text_data, tiny_models, on_bad_item="skip")
    assert skipping.dataset("train")[2] is None
    batch = skipping.collator([skipping.dataset("train")[i] for i in range(5)])  # items 2, 3: image 1
    assert batch["a_id"].tolist() == [0, 0, 2]
    assert skipping.bad_items.counts["unreadable_image"] == 3 and "skipping an item" in caplog.text


def test_missing_annotation_file_and_split(tmp_path: Path, image_text_data, tiny_models) -> None:
    with pytest.raises(FileNotFoundError, match="annotations"):
        _module(image_text_data, tiny_models, annotations=str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="train_splits"):
        _module(image_text_data, tiny_models, train_splits=["restval"])

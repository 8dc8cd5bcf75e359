"""ShapesDataModule: batch format, loaders and binding negatives."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from distill.data.shapes.datamodule import ShapesDataModule
from distill.data.shapes import caption_template, parse_caption

SMALL = dict(seed=0, num_train=50, num_val=10, num_test=12, batch_size=8, eval_batch_size=16)


@pytest.fixture(scope="module")
def datamodule() -> ShapesDataModule:
    module = ShapesDataModule(**SMALL)
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def negatives_datamodule() -> ShapesDataModule:
    module = ShapesDataModule(**SMALL, binding_negatives=True)
    module.setup("fit")
    return module


def _decode(tokenizer: PreTrainedTokenizerFast, input_ids: torch.Tensor) -> str:
    return tokenizer.decode(input_ids.tolist(), skip_special_tokens=True)


def test_vocab_size_is_known_before_setup() -> None:
    module = ShapesDataModule(**SMALL)
    assert module.vocab_size == len(module.tokenizer) > 5
    assert module.corpus is None


def test_setup_caches_images_and_tokens(datamodule: ShapesDataModule) -> None:
    images = datamodule.images["train"]
    assert images.shape == (50, 3, 64, 64) and images.dtype == torch.uint8
    assert len(datamodule.dataset("train")) == 50 * 3
    assert len(datamodule.dataset("val")) == 10 * 3
    assert datamodule.hparams["num_train"] == 50


def test_batch_keys_shapes_and_dtypes(datamodule: ShapesDataModule) -> None:
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"a", "b", "a_id", "b_id"}
    pixels = batch["a"]["pixel_values"]
    assert pixels.shape == (8, 3, 64, 64) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and pixels.min() == -1.0
    ids, mask = batch["b"]["input_ids"], batch["b"]["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 8
    assert ids.shape[1] == int(mask.sum(dim=1).max()) <= 32
    assert torch.equal(ids != datamodule.pad_token_id, mask.bool())
    assert (ids[:, 0] == datamodule.tokenizer.cls_token_id).all()
    assert batch["a_id"].dtype == batch["b_id"].dtype == torch.long
    assert batch["a_id"].shape == batch["b_id"].shape == (8,)


def test_pixels_are_normalised_images_of_the_right_item(datamodule: ShapesDataModule) -> None:
    batch = next(iter(datamodule.val_dataloader()))
    corpus = datamodule.corpus
    rows = {item.image_id: row for row, item in enumerate(corpus.val)}
    for pixels, image_id in zip(batch["a"]["pixel_values"], batch["a_id"].tolist()):
        raw = datamodule.images["val"][rows[image_id]].float()
        assert torch.allclose(pixels, (raw / 255 - 0.5) / 0.5)


def test_captions_of_one_image_share_its_id(datamodule: ShapesDataModule) -> None:
    signatures = {item.image_id: item.signature for item in datamodule.corpus.val}
    captions_by_image = defaultdict(list)
    for batch in datamodule.val_dataloader():
        for input_ids, image_id in zip(batch["b"]["input_ids"], batch["a_id"].tolist()):
            text = _decode(datamodule.tokenizer, input_ids)
            assert parse_caption(text) == signatures[image_id]
            captions_by_image[image_id].append(text)
    assert set(captions_by_image) == set(signatures)
    assert all(len(set(texts)) == 3 for texts in captions_by_image.values())


def test_eval_loaders_cover_every_caption_once_in_order(datamodule: ShapesDataModule) -> None:
    corpus = datamodule.corpus
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader()),
                          ("test", datamodule.predict_dataloader())):
        expected = [corpus.caption_id(item.image_id, j) for item in corpus.split(split)
                    for j in range(len(item.captions))]
        seen = torch.cat([batch["b_id"] for batch in loader]).tolist()
        assert seen == expected


def test_train_loader_is_seeded_shuffled_and_drops_last() -> None:
    orders = []
    for _ in range(2):
        module = ShapesDataModule(**SMALL)
        module.setup("fit")
        batches = list(module.train_dataloader())
        assert len(batches) == (50 * 3) // 8
        assert all(batch["b_id"].shape == (8,) for batch in batches)
        orders.append(torch.cat([batch["b_id"] for batch in batches]).tolist())
    assert orders[0] == orders[1]
    assert orders[0] != sorted(orders[0])
    assert len(set(orders[0])) == len(orders[0])


def test_binding_negatives_only_when_requested(
    datamodule: ShapesDataModule, negatives_datamodule: ShapesDataModule
) -> None:
    assert "b_neg" not in next(iter(datamodule.train_dataloader()))
    assert "b_neg" not in next(iter(negatives_datamodule.val_dataloader()))
    assert "b_neg" in next(iter(negatives_datamodule.train_dataloader()))


def test_binding_negative_is_a_same_template_swap_describing_no_image(
    negatives_datamodule: ShapesDataModule,
) -> None:
    tokenizer = negatives_datamodule.tokenizer
    corpus = negatives_datamodule.corpus
    signatures = {item.image_id: item.signature for item in corpus.train}
    every_scene = corpus.signatures()
    batch = next(iter(negatives_datamodule.train_dataloader()))
    negative = batch["b_neg"]
    assert negative["input_ids"].dtype == negative["attention_mask"].dtype == torch.long
    assert negative["input_ids"].shape[0] == 8
    assert not torch.equal(negative["input_ids"], batch["b"]["input_ids"])
    for row, image_id in enumerate(batch["a_id"].tolist()):
        positive = _decode(tokenizer, batch["b"]["input_ids"][row])
        swapped = _decode(tokenizer, negative["input_ids"][row])
        assert swapped != positive
        assert Counter(swapped.split()) == Counter(positive.split())
        assert caption_template(swapped) == caption_template(positive)
        assert parse_caption(swapped) != signatures[image_id]
        assert parse_caption(swapped) not in every_scene


def test_tokenizer_is_saved_to_tokenizer_dir(tmp_path: Path) -> None:
    target = tmp_path / "tokenizer"
    module = ShapesDataModule(**SMALL, tokenizer_dir=str(target))
    module.setup("fit")
    loaded = PreTrainedTokenizerFast.from_pretrained(target)
    caption = module.corpus.train[0].captions[0]
    assert loaded(caption)["input_ids"] == module.tokenizer(caption)["input_ids"]
    assert len(loaded) == module.vocab_size


def test_dataset_requires_setup() -> None:
    with pytest.raises(RuntimeError):
        ShapesDataModule(**SMALL).val_dataloader()

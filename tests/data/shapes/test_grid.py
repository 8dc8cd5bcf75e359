"""The grid layout of the shapes benchmark: captions, binding swaps, rendering, corpus and data module."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from distill.data.shapes import COLORS, SPLITS, generate_corpus, signature_overlap, vocabulary
from distill.data.shapes.grid import (
    SWAP_FIELDS,
    TEMPLATES,
    GridObject,
    are_twins,
    binding_negative_caption,
    describe,
    parse_caption,
    parse_mentions,
    perturbations,
    sample_signature,
    scene_layout,
    swapped_caption,
)

SMALL = dict(num_train=60, num_val=12, num_test=12, layout="grid", num_objects=4)


def _signatures(num_objects: int = 4, count: int = 30) -> list[tuple[GridObject, ...]]:
    rng = np.random.default_rng(0)
    return [sample_signature(rng, num_objects) for _ in range(count)]


def test_documented_wording_and_orders() -> None:
    scene = (GridObject(0, "small", "red", "circle"), GridObject(4, "large", "blue", "square"),
             GridObject(6, "small", "green", "triangle"))
    assert describe(scene, "reading") == ("small red circle at top left , large blue square at middle centre , "
                                          "small green triangle at bottom left")
    assert describe(scene, "columns").startswith("small red circle at top left , small green triangle at bottom left")
    assert describe(scene, "reverse").startswith("small green triangle at bottom left")


@pytest.mark.parametrize("num_objects", [2, 4, 6])
def test_every_template_parses_back(num_objects: int) -> None:
    for signature in _signatures(num_objects):
        assert [obj.cell for obj in signature] == sorted({obj.cell for obj in signature})
        captions = {describe(signature, template) for template in TEMPLATES}
        for caption in captions:
            assert parse_caption(caption) == signature
            assert parse_caption(caption.upper()) == signature


@pytest.mark.parametrize("text", ["", "small red circle at top", "small red circle at top left , "
                                  "large blue square at top left", "huge red circle at top left , small red "
                                  "circle at top right"])
def test_malformed_grid_captions_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(text)


def test_swaps_keep_the_words_and_change_the_scene() -> None:
    rng = np.random.default_rng(3)
    for signature in _signatures():
        options = perturbations(signature)
        assert options and signature not in options
        for other in options:
            assert are_twins(signature, other)
            assert [obj.cell for obj in other] == [obj.cell for obj in signature]
            assert Counter(describe(other, "reading").split()) == Counter(describe(signature, "reading").split())
        caption = describe(signature, "columns_reverse")
        negative = binding_negative_caption(caption, rng, exclude=frozenset(options[:1]))
        assert Counter(negative.split()) == Counter(caption.split())
        assert parse_caption(negative) in options[1:]
        # the negative names the cells in the caption's own order
        assert [w for w in negative.split() if w in ("top", "middle", "bottom")] == \
            [w for w in caption.split() if w in ("top", "middle", "bottom")]


def test_overlap_counts_shared_attributes_per_cell() -> None:
    scene = (GridObject(0, "small", "red", "circle"), GridObject(4, "large", "blue", "square"))
    assert signature_overlap(scene, scene) == 6
    assert signature_overlap(scene, perturbations(scene)[0]) == 4  # a colour swap
    assert signature_overlap(scene, (GridObject(1, "small", "red", "circle"), scene[1])) == 3


def test_render_puts_each_object_in_its_cell() -> None:
    for seed, signature in enumerate(_signatures(5, count=10)):
        image = scene_layout(signature, seed, 64)
        for obj, where in zip(signature, image):
            assert int(where.cx // (64 / 3)) == obj.cell % 3 and int(where.cy // (64 / 3)) == obj.cell // 3
    corpus = generate_corpus(seed=1, **SMALL)
    pixels = corpus.render(corpus.test[0])
    colours = {tuple(p) for p in pixels.reshape(-1, 3).tolist()}
    assert colours <= {(0, 0, 0)} | set(COLORS.values())
    assert {COLORS[obj.color] for obj in corpus.test[0].signature} <= colours


def test_grid_corpus_is_deterministic_and_split_safe() -> None:
    first, second = generate_corpus(seed=5, **SMALL), generate_corpus(seed=5, **SMALL)
    assert first == second and first.layout == "grid"
    for split in SPLITS:
        for item in first.split(split):
            assert all(parse_caption(caption) == item.signature for caption in item.captions)
    assert not first.signatures("train") & first.signatures("test")
    assert first.twin_pairs("test")


def test_grid_words_are_appended_after_the_row_words() -> None:
    words = vocabulary()
    assert words.index("top") > words.index("yellow")  # the row layout's ids never move
    assert {"at", "top", "middle", "bottom", "centre"} <= set(words)


def test_grid_datamodule_batches_carry_grid_binding_negatives() -> None:
    from distill.data import ShapesDataModule

    data = ShapesDataModule(num_train=40, num_val=8, num_test=8, layout="grid", num_objects=5, max_length=40,
                            batch_size=8, binding_negatives=True)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["b"]["input_ids"].shape[1] <= 40 and "b_neg" in batch
    texts = data.tokenizer.batch_decode(batch["b_neg"]["input_ids"], skip_special_tokens=True)
    signatures = data.corpus.signatures()
    for text in texts:
        assert parse_caption(text) not in signatures


@pytest.mark.parametrize("kind", sorted(SWAP_FIELDS))
def test_swapped_caption_is_a_binding_swap_of_its_kind(kind: str) -> None:
    caption = "small red circle at top left , large blue square at middle centre , small red triangle at bottom right"
    rng = np.random.default_rng(0)
    for _ in range(20):
        swapped = swapped_caption(caption, kind, rng)
        before, after = parse_mentions(caption), parse_mentions(swapped)
        assert sorted(swapped.split()) == sorted(caption.split())
        assert [obj.cell for obj in after] == [obj.cell for obj in before]
        changed = [(x, y) for x, y in zip(before, after) if x != y]
        assert len(changed) == 2
        kept = {"color", "size", "shape"} - set(SWAP_FIELDS[kind])
        assert all(getattr(x, name) == getattr(y, name) for x, y in changed for name in kept)
        assert tuple(sorted(after)) in perturbations(tuple(sorted(before)))


def test_swapped_caption_is_none_when_no_two_objects_differ_in_that_kind() -> None:
    caption = "small red circle at top left , large red square at middle centre"
    assert swapped_caption(caption, "colour", np.random.default_rng(0)) is None
    assert swapped_caption(caption, "size", np.random.default_rng(0)) is not None

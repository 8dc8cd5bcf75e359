"""Corpus generation, captions, binding swaps and rendering of the shapes benchmark (the row layout)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from distill.data.shapes import (
    COLORS,
    SPLITS,
    TEMPLATES,
    ShapeObject,
    are_twins,
    binding_negative_caption,
    caption_template,
    describe,
    generate_corpus,
    parse_caption,
    perturb_signature,
    perturbations,
    render_scene,
    sample_signature,
    scene_layout,
    templates_for,
)

SMALL = dict(num_train=50, num_val=12, num_test=12)


def _random_signatures(num_objects: int, count: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sample_signature(rng, num_objects) for _ in range(count)]


def test_same_seed_gives_identical_corpus_and_pixels() -> None:
    first = generate_corpus(seed=3, **SMALL)
    second = generate_corpus(seed=3, **SMALL)
    assert first == second
    for a, b in zip(first.items(), second.items()):
        assert first.render(a).tobytes() == second.render(b).tobytes()


def test_different_seed_gives_different_corpus() -> None:
    first = generate_corpus(seed=0, **SMALL)
    second = generate_corpus(seed=1, **SMALL)
    assert first.signatures() != second.signatures()
    assert [item.captions for item in first.train] != [item.captions for item in second.train]


def test_test_split_does_not_depend_on_train_size() -> None:
    small = generate_corpus(seed=5, num_train=20, num_val=12, num_test=12)
    large = generate_corpus(seed=5, num_train=80, num_val=12, num_test=12)
    assert [item.signature for item in small.test] == [item.signature for item in large.test]
    assert [item.captions for item in small.test] == [item.captions for item in large.test]


@pytest.mark.parametrize("num_objects", [2, 3, 4])
def test_every_caption_parses_back_to_its_signature(num_objects: int) -> None:
    templates = templates_for(num_objects)
    corpus = generate_corpus(
        seed=1, num_objects=num_objects, captions_per_image=len(templates), **SMALL
    )
    seen = set()
    for item in corpus.items():
        assert len(item.signature) == num_objects
        assert len(set(item.captions)) == len(item.captions) == len(templates)
        for caption in item.captions:
            assert parse_caption(caption) == item.signature
            seen.add(caption_template(caption))
    assert seen == set(templates)


@pytest.mark.parametrize("num_objects", [2, 3, 4])
def test_describe_and_parse_are_inverse_for_every_template(num_objects: int) -> None:
    for signature in _random_signatures(num_objects):
        captions = {describe(signature, template) for template in templates_for(num_objects)}
        assert len(captions) == len(templates_for(num_objects))
        for template in templates_for(num_objects):
            caption = describe(signature, template)
            assert parse_caption(caption) == signature
            assert caption_template(caption) == template
            assert parse_caption(caption.upper().replace(" ", "  ")) == signature


def test_templates_match_the_documented_wording() -> None:
    signature = (
        ShapeObject("small", "red", "circle"),
        ShapeObject("large", "blue", "square"),
        ShapeObject("small", "green", "triangle"),
    )
    assert describe(signature, "left_chain") == (
        "a small red circle left of a large blue square left of a small green triangle"
    )
    assert describe(signature, "right_chain") == (
        "a small green triangle right of a large blue square right of a small red circle"
    )
    assert describe(signature, "enumeration") == (
        "from left to right : a small red circle , a large blue square , a small green triangle"
    )
    assert describe(signature, "anchored") == (
        "a large blue square with a small red circle on its left and a small green triangle on its right"
    )
    assert set(TEMPLATES) == set(templates_for(3))


@pytest.mark.parametrize("text", ["", "a small red circle", "a tiny red circle left of a large blue square",
                                  "a small red circle left of a small red"])
def test_parse_caption_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(text)


@pytest.mark.parametrize("num_objects", [2, 3, 4])
def test_perturbation_changes_binding_but_not_words(num_objects: int) -> None:
    rng = np.random.default_rng(7)
    for signature in _random_signatures(num_objects):
        perturbed = perturb_signature(signature, rng)
        assert perturbed != signature
        assert are_twins(signature, perturbed)
        for template in templates_for(num_objects):
            original_words = Counter(describe(signature, template).split())
            assert Counter(describe(perturbed, template).split()) == original_words


def test_perturbations_cover_attribute_and_position_swaps() -> None:
    red_circle, blue_square = ShapeObject("small", "red", "circle"), ShapeObject("large", "blue", "square")
    options = set(perturbations((red_circle, blue_square)))
    assert (ShapeObject("small", "blue", "circle"), ShapeObject("large", "red", "square")) in options
    assert (ShapeObject("large", "red", "circle"), ShapeObject("small", "blue", "square")) in options
    assert (ShapeObject("small", "red", "square"), ShapeObject("large", "blue", "circle")) in options
    assert (blue_square, red_circle) in options
    assert len(options) == 4


def test_identical_objects_have_no_binding_swap() -> None:
    same = (ShapeObject("small", "red", "circle"),) * 3
    assert perturbations(same) == ()
    with pytest.raises(ValueError):
        perturb_signature(same, np.random.default_rng(0))


def test_binding_negative_caption_keeps_template_and_words() -> None:
    rng = np.random.default_rng(0)
    for signature in _random_signatures(3):
        for template in templates_for(3):
            caption = describe(signature, template)
            negative = binding_negative_caption(caption, rng, exclude=frozenset(perturbations(signature)[:1]))
            assert caption_template(negative) == template
            assert Counter(negative.split()) == Counter(caption.split())
            assert parse_caption(negative) != signature
            assert parse_caption(negative) != perturbations(signature)[0]


def test_twins_share_a_split_when_twin_prob_is_one() -> None:
    corpus = generate_corpus(seed=2, twin_prob=1.0, **SMALL)
    for split in SPLITS:
        items = corpus.split(split)
        pairs = corpus.twin_pairs(split)
        assert len(pairs) >= 0.4 * len(items)
        by_id = {item.image_id: item.signature for item in items}
        for first, second in pairs:
            assert are_twins(by_id[first], by_id[second])


def test_no_twins_planted_when_twin_prob_is_zero() -> None:
    with_twins = generate_corpus(seed=2, twin_prob=1.0, **SMALL)
    without = generate_corpus(seed=2, twin_prob=0.0, **SMALL)
    assert len(without.twin_pairs("train")) < len(with_twins.twin_pairs("train"))


def test_splits_do_not_leak_and_ids_are_unique() -> None:
    corpus = generate_corpus(seed=4, twin_prob=1.0, **SMALL)
    signatures = {split: [item.signature for item in corpus.split(split)] for split in SPLITS}
    for split in SPLITS:
        assert len(set(signatures[split])) == len(signatures[split])
    assert not set(signatures["train"]) & set(signatures["val"])
    assert not set(signatures["train"]) & set(signatures["test"])
    assert not set(signatures["val"]) & set(signatures["test"])
    assert [len(corpus.split(split)) for split in SPLITS] == [50, 12, 12]
    image_ids = [item.image_id for item in corpus.items()]
    assert len(set(image_ids)) == len(image_ids)
    caption_ids = [corpus.caption_id(item.image_id, j) for item in corpus.items() for j in range(len(item.captions))]
    assert len(set(caption_ids)) == len(caption_ids)
    assert len({c for item in corpus.items() for c in item.captions}) == len(caption_ids)


@pytest.mark.parametrize("image_size", [32, 64, 96])
@pytest.mark.parametrize("num_objects", [2, 3, 4])
def test_render_draws_each_object_left_to_right(image_size: int, num_objects: int) -> None:
    for seed, signature in enumerate(_random_signatures(num_objects, count=10)):
        image = render_scene(signature, seed, image_size)
        assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
        layout = scene_layout(signature, seed, image_size)
        xs = [where.cx for where in layout]
        assert all(a < b for a, b in zip(xs, xs[1:]))
        for where in layout:
            assert where.radius <= where.cx <= image_size - 1 - where.radius
            assert where.radius <= where.cy <= image_size - 1 - where.radius
        colours = {tuple(pixel) for pixel in image.reshape(-1, 3).tolist()}
        assert colours <= {(0, 0, 0)} | set(COLORS.values())
        assert {COLORS[obj.color] for obj in signature} <= colours


def test_large_objects_cover_more_pixels_than_small_ones() -> None:
    for shape in ("circle", "square", "triangle", "diamond"):
        areas = {}
        for size in ("small", "large"):
            signature = (ShapeObject(size, "red", shape), ShapeObject("small", "green", "circle"))
            image = render_scene(signature, 0)
            areas[size] = int((image == np.array(COLORS["red"], dtype=np.uint8)).all(axis=-1).sum())
        assert areas["large"] > 2 * areas["small"] > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_objects=6),
        dict(num_objects=1),
        dict(twins_per_scene=0),
        dict(layout="spiral"),
        dict(num_objects=4, captions_per_image=4),
        dict(captions_per_image=1),
        dict(twin_prob=1.5),
        dict(num_objects=2, num_train=5000),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict) -> None:
    arguments = {**SMALL, **kwargs}
    with pytest.raises(ValueError):
        generate_corpus(**arguments)


def test_original_benchmark_is_unchanged() -> None:
    """configs/demo/data.yaml's split (row layout, the defaults) stays exactly what it was."""
    corpus = generate_corpus()
    assert [len(corpus.split(split)) for split in SPLITS] == [6000, 300, 500]
    first = corpus.test[0]
    assert first.image_id == 6300 and first.render_seed == 639509672
    assert first.captions[0] == ("a small green circle with a large yellow triangle on its left and a small red "
                                 "circle on its right")
    assert len(corpus.twin_pairs("test")) == 170
    assert int(corpus.render(first).astype(np.int64).sum()) == 149380


def test_five_objects_in_a_row_parse_and_fit_the_image() -> None:
    corpus = generate_corpus(seed=0, num_objects=5, **SMALL)
    for item in corpus.items():
        for caption in item.captions:
            assert parse_caption(caption) == item.signature
        layout = scene_layout(item.signature, item.render_seed, 64)
        assert all(a.cx < b.cx for a, b in zip(layout, layout[1:]))


@pytest.mark.parametrize("twins_per_scene", [1, 3])
def test_twin_groups_stay_in_their_split(twins_per_scene: int) -> None:
    corpus = generate_corpus(seed=2, twin_prob=1.0, twins_per_scene=twins_per_scene, **SMALL)
    items = corpus.train
    # every scene that is not a twin of the scene before it opens a group of up to 1 + twins_per_scene
    groups, current = [], [items[0].signature]
    for item in items[1:]:
        if are_twins(current[0], item.signature):
            current.append(item.signature)
        else:
            groups.append(current)
            current = [item.signature]
    groups.append(current)
    assert max(len(group) for group in groups) == 1 + twins_per_scene
    assert len(corpus.twin_pairs("train")) >= len(items) // (1 + twins_per_scene)

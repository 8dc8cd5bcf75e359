"""The shapes corpus: train/val/test scenes with captions, for either layout (``row`` or ``grid``).

``generate_corpus`` is a pure function of its arguments. A *layout* is the family of scenes
(``row``: objects left to right, :mod:`distill.data.shapes.row`; ``grid``: objects in named cells
of a 3x3 grid, :mod:`distill.data.shapes.grid`); the corpus logic (unique signatures, binding
twins kept in their split, captions, render seeds) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from distill.data.shapes import grid, row
from distill.data.shapes.render import render_scene as render_row_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_STREAM = {"test": 0, "val": 1, "train": 2}

Signature = tuple[Any, ...]
"""A scene's objects (``ShapeObject`` left to right, or ``GridObject`` in cell order)."""


class ShapeItem(NamedTuple):
    """One image of the corpus."""

    image_id: int
    signature: Signature
    captions: tuple[str, ...]
    render_seed: int


@dataclass(frozen=True)
class Layout:
    """The functions that define one family of scenes."""

    name: str
    check_num_objects: Callable[[int], None]
    signature_space_size: Callable[[int], int]
    sample_signature: Callable[[np.random.Generator, int], Signature]
    perturbations: Callable[[Signature], tuple[Signature, ...]]
    templates_for: Callable[[int], tuple[str, ...]]
    describe: Callable[[Signature, str], str]
    parse_caption: Callable[[str], Signature]
    binding_negative_caption: Callable[[str, np.random.Generator, frozenset], str]
    render_scene: Callable[[Signature, int, int], np.ndarray]


def row_binding_negative_caption(caption: str, rng: np.random.Generator,
                                 exclude: frozenset[Signature] = frozenset()) -> str:
    """A caption with the same template and words as a row ``caption`` for a binding swap of its scene.

    Swaps whose signature is in ``exclude`` (e.g. every scene of a corpus) are avoided
    unless no other swap exists.
    """
    signature = row.parse_caption(caption)
    options = row.perturbations(signature)
    if not options:
        raise ValueError(f"caption '{caption}' describes identical objects and has no binding swap")
    allowed = [other for other in options if other not in exclude] or list(options)
    negative = allowed[int(rng.integers(len(allowed)))]
    return row.describe(negative, row.caption_template(caption))


LAYOUTS: dict[str, Layout] = {
    "row": Layout("row", row.check_num_objects, row.signature_space_size, row.sample_signature,
                  row.perturbations, row.templates_for, row.describe, row.parse_caption,
                  row_binding_negative_caption, render_row_scene),
    "grid": Layout("grid", grid.check_num_objects, grid.signature_space_size,
                   grid.sample_signature, grid.perturbations, grid.templates_for,
                   grid.describe, grid.parse_caption, grid.binding_negative_caption,
                   grid.render_scene),
}


def get_layout(name: str) -> Layout:
    """The :class:`Layout` called ``name`` (``row`` or ``grid``)."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown shapes layout '{name}', expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def binding_negative_caption(caption: str, rng: np.random.Generator, exclude: frozenset[Signature] = frozenset(),
                             layout: str = "row") -> str:
    """A caption with the same words as ``caption`` that describes a binding swap of its scene."""
    return get_layout(layout).binding_negative_caption(caption, rng, exclude)


@dataclass(frozen=True)
class ShapesCorpus:
    """Train/val/test items of one generated benchmark.

    Image ids are consecutive over train, val, test; caption ``j`` of image ``i`` has id
    ``i * captions_per_image + j``. Signatures are unique across the whole corpus.
    """

    seed: int
    num_objects: int
    captions_per_image: int
    twin_prob: float
    image_size: int
    train: tuple[ShapeItem, ...]
    val: tuple[ShapeItem, ...]
    test: tuple[ShapeItem, ...]
    layout: str = "row"

    def split(self, name: str) -> tuple[ShapeItem, ...]:
        """Items of split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}', expected one of {SPLITS}")
        return getattr(self, name)

    def items(self) -> tuple[ShapeItem, ...]:
        """All items, train then val then test."""
        return self.train + self.val + self.test

    def caption_id(self, image_id: int, index: int) -> int:
        """Global id of caption ``index`` of image ``image_id``."""
        return image_id * self.captions_per_image + index

    def signatures(self, split: str | None = None) -> frozenset[Signature]:
        """Signatures of one split, or of the whole corpus."""
        items = self.items() if split is None else self.split(split)
        return frozenset(item.signature for item in items)

    def render(self, item: ShapeItem) -> np.ndarray:
        """uint8 ``[H, W, 3]`` image of ``item``."""
        return get_layout(self.layout).render_scene(item.signature, item.render_seed, self.image_size)

    def twin_pairs(self, split: str) -> tuple[tuple[int, int], ...]:
        """``(image_id, image_id)`` pairs of a split whose signatures are binding swaps."""
        perturbations = get_layout(self.layout).perturbations
        by_signature = {item.signature: item.image_id for item in self.split(split)}
        pairs = set()
        for signature, image_id in by_signature.items():
            for other in perturbations(signature):
                if other in by_signature:
                    pairs.add(tuple(sorted((image_id, by_signature[other]))))
        return tuple(sorted(pairs))


def _fresh_signature(layout: Layout, rng: np.random.Generator, num_objects: int, used: set[Signature]) -> Signature:
    while True:
        signature = layout.sample_signature(rng, num_objects)
        if signature not in used:
            return signature


def _sample_split_signatures(layout: Layout, rng: np.random.Generator, count: int, num_objects: int,
                             twin_prob: float, twins_per_scene: int, used: set[Signature]) -> list[Signature]:
    """``count`` unused signatures; with ``twin_prob`` each is followed by up to ``twins_per_scene`` unused twins."""
    signatures: list[Signature] = []
    while len(signatures) < count:
        signature = _fresh_signature(layout, rng, num_objects, used)
        signatures.append(signature)
        used.add(signature)
        if len(signatures) < count and rng.random() < twin_prob:
            for _ in range(twins_per_scene):
                options = [other for other in layout.perturbations(signature) if other not in used]
                if not options or len(signatures) >= count:
                    break
                twin = options[int(rng.integers(len(options)))]
                signatures.append(twin)
                used.add(twin)
    return signatures


def _captions(layout: Layout, rng: np.random.Generator, signature: Signature, count: int) -> tuple[str, ...]:
    templates = layout.templates_for(len(signature))
    chosen = rng.choice(len(templates), size=count, replace=False)
    return tuple(layout.describe(signature, templates[int(k)]) for k in chosen)


def _validate(layout: Layout, num_objects: int, captions_per_image: int, twin_prob: float, twins_per_scene: int,
              image_size: int, total: int) -> None:
    layout.check_num_objects(num_objects)
    available = len(layout.templates_for(num_objects))
    if not 2 <= captions_per_image <= available:
        raise ValueError(f"captions_per_image must be in [2, {available}] for {num_objects} objects")
    if not 0.0 <= twin_prob <= 1.0:
        raise ValueError(f"twin_prob must be in [0, 1], got {twin_prob}")
    if twins_per_scene < 1:
        raise ValueError(f"twins_per_scene must be >= 1, got {twins_per_scene}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if total > layout.signature_space_size(num_objects):
        raise ValueError(
            f"{total} unique scenes requested but only {layout.signature_space_size(num_objects)} "
            f"exist with {num_objects} objects"
        )


def generate_corpus(
    seed: int = 0,
    num_train: int = 6000,
    num_val: int = 300,
    num_test: int = 500,
    num_objects: int = 3,
    captions_per_image: int = 3,
    twin_prob: float = 0.5,
    image_size: int = 64,
    layout: str = "row",
    twins_per_scene: int = 1,
) -> ShapesCorpus:
    """Generate the benchmark; a pure function of its arguments.

    Splits are sampled test first, then val, then train, each from its own random
    stream, so the test split does not depend on ``num_train`` or ``num_val``. Twins
    (binding swaps) count towards their split's size and always stay in that split.
    ``twins_per_scene > 1`` makes twin groups (several swaps of one scene in one split).
    """
    family = get_layout(layout)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if min(counts.values()) < 0 or seed < 0:
        raise ValueError("seed and split sizes must be non-negative")
    _validate(family, num_objects, captions_per_image, twin_prob, twins_per_scene, image_size,
              sum(counts.values()))
    used: set[Signature] = set()
    signatures: dict[str, list[Signature]] = {}
    rngs = {name: np.random.default_rng([seed, stream]) for name, stream in _SPLIT_STREAM.items()}
    for name in sorted(_SPLIT_STREAM, key=_SPLIT_STREAM.__getitem__):
        signatures[name] = _sample_split_signatures(family, rngs[name], counts[name], num_objects, twin_prob,
                                                    twins_per_scene, used)
    splits: dict[str, tuple[ShapeItem, ...]] = {}
    next_id = 0
    for name in SPLITS:
        rng = rngs[name]
        items = []
        for signature in signatures[name]:
            captions = _captions(family, rng, signature, captions_per_image)
            items.append(ShapeItem(next_id, signature, captions, int(rng.integers(2**31 - 1))))
            next_id += 1
        splits[name] = tuple(items)
    return ShapesCorpus(seed, num_objects, captions_per_image, twin_prob, image_size, layout=layout, **splits)

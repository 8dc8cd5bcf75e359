"""Synthetic "shapes" benchmark: scene sampling, rendering and captions (one import for all of it).

Two layouts share one corpus generator (:func:`generate_corpus`, ``layout=``):

* ``row`` (:mod:`distill.data.shapes.row`): a row of ``num_objects`` coloured shapes, captions that
  chain the objects left to right ("a small red circle left of a large blue square ...");
* ``grid`` (:mod:`distill.data.shapes.grid`): objects in named cells of a 3x3 grid, captions that
  name each object's cell ("small red circle at top left , ...").

A scene's *signature* is exactly what its captions describe, so a caption identifies one scene.
Binding hard negatives (*twins*) reuse the same words with the attributes bound to different
objects. Everything is a pure function of its arguments; nothing is downloaded. The names below
keep their meaning for the row layout (the benchmark's original form).

The package's other modules are imported on their own, so this one needs only numpy and Pillow:
:mod:`~distill.data.shapes.tokenizer` (the word-level tokenizer of the captions) and
:mod:`~distill.data.shapes.datamodule` (:class:`ShapesDataModule`, Lightning and Transformers).
"""

from __future__ import annotations

from distill.data.shapes.corpus import (
    LAYOUTS,
    SPLITS,
    Layout,
    ShapeItem,
    ShapesCorpus,
    binding_negative_caption,
    generate_corpus,
    get_layout,
)
from distill.data.shapes.grid import vocabulary as grid_vocabulary
from distill.data.shapes.render import Placement, render_scene, scene_layout
from distill.data.shapes.row import (
    ANCHORED,
    COLOR_NAMES,
    COLORS,
    ENUMERATION,
    LEFT_CHAIN,
    MAX_OBJECTS,
    MIN_OBJECTS,
    RIGHT_CHAIN,
    SHAPES,
    SIZES,
    TEMPLATES,
    ShapeObject,
    Signature,
    are_twins,
    caption_template,
    describe,
    parse_caption,
    perturb_signature,
    perturbations,
    sample_signature,
    signature_space_size,
    templates_for,
)


def _row_vocabulary() -> set[str]:
    words = set(SIZES) | set(COLORS) | set(SHAPES)
    probe = tuple(ShapeObject(SIZES[0], COLOR_NAMES[0], SHAPES[0]) for _ in range(MAX_OBJECTS))
    for num_objects in range(MIN_OBJECTS, MAX_OBJECTS + 1):
        for template in templates_for(num_objects):
            words.update(describe(probe[:num_objects], template).split())
    return words


def vocabulary() -> tuple[str, ...]:
    """Every word any caption can contain: the row layout's words sorted, then the words only the grid
    layout uses, sorted (so adding a layout never renumbers the words of an earlier one)."""
    row = _row_vocabulary()
    return tuple(sorted(row)) + tuple(sorted(set(grid_vocabulary()) - row))


def signature_overlap(first: Signature, second: Signature) -> int:
    """Attributes (size, colour, shape) two scenes of one layout share object by object (row: the same
    position from the left; grid: the same cell). ``0 <= overlap <= 3 * num_objects``."""
    if first and hasattr(first[0], "cell"):
        cells = {obj.cell: obj for obj in second}
        return sum((obj.size == other.size) + (obj.color == other.color) + (obj.shape == other.shape)
                   for obj in first if (other := cells.get(obj.cell)) is not None)
    return sum((x.size == y.size) + (x.color == y.color) + (x.shape == y.shape) for x, y in zip(first, second))


def layout_are_twins(first: Signature, second: Signature, layout: str = "row") -> bool:
    """Whether ``second`` is a single binding swap of ``first`` in ``layout``."""
    return tuple(second) in get_layout(layout).perturbations(first)


__all__ = [
    "ANCHORED", "COLORS", "COLOR_NAMES", "ENUMERATION", "LAYOUTS", "LEFT_CHAIN", "Layout", "MAX_OBJECTS",
    "MIN_OBJECTS", "Placement", "RIGHT_CHAIN", "SHAPES", "SIZES", "SPLITS", "ShapeItem", "ShapeObject",
    "ShapesCorpus", "Signature", "TEMPLATES", "are_twins", "binding_negative_caption", "caption_template",
    "describe", "generate_corpus", "get_layout", "layout_are_twins", "parse_caption", "perturb_signature",
    "perturbations", "render_scene", "sample_signature", "scene_layout", "signature_overlap",
    "signature_space_size", "templates_for", "vocabulary",
]

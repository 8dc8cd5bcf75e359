"""Shapes on a 3x3 grid, named by cell: the ``grid`` layout of the shapes benchmark.

A scene puts ``num_objects`` coloured shapes in distinct cells of a 3x3 grid. Its *signature* is
the tuple of ``(cell, size, color, shape)`` objects in cell order (``cell = 3 * row + column``,
row 0 at the top). A caption names every object with its cell, e.g. "small red circle at top
left , large blue square at middle centre , small green triangle at bottom right", in one of
four mention orders, so a caption identifies exactly one scene. Binding swaps exchange the
colours, sizes, shapes or whole objects of two cells: the caption keeps its words and its cell
words, and only which attributes sit next to which cell changes. Deciding that needs the cell
and the attributes of each object together, which a caption read against the image gives
directly and a single pooled image vector has to encode for every cell at once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from distill.data.shapes.render import Placement, draw_objects
from distill.data.shapes.row import COLOR_NAMES, COLORS, SHAPES, SIZES

GRID_ROWS: tuple[str, ...] = ("top", "middle", "bottom")
GRID_COLUMNS: tuple[str, ...] = ("left", "centre", "right")
NUM_CELLS = 9
MIN_OBJECTS = 2
MAX_OBJECTS = 6

READING = "reading"
REVERSE = "reverse"
COLUMN_MAJOR = "columns"
COLUMN_REVERSE = "columns_reverse"
TEMPLATES: tuple[str, ...] = (READING, REVERSE, COLUMN_MAJOR, COLUMN_REVERSE)

_SEPARATOR = " , "
_RADIUS = {"small": 0.2, "large": 0.36}  # of the cell's side
_JITTER = 0.12  # of the cell's side, each axis


class GridObject(NamedTuple):
    """One object of a grid scene: its cell (``3 * row + column``) and attributes."""

    cell: int
    size: str
    color: str
    shape: str


GridSignature = tuple[GridObject, ...]
"""Objects of a grid scene in cell order; exactly what its captions describe."""


def check_num_objects(num_objects: int) -> None:
    if not MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in [{MIN_OBJECTS}, {MAX_OBJECTS}] for the grid layout, got {num_objects}")


def signature_space_size(num_objects: int) -> int:
    """Number of grid signatures with ``num_objects`` objects (an upper bound on unique scenes)."""
    from math import comb

    return comb(NUM_CELLS, num_objects) * (len(SIZES) * len(COLORS) * len(SHAPES)) ** num_objects


def sample_signature(rng: np.random.Generator, num_objects: int) -> GridSignature:
    """Distinct cells uniformly, attributes uniformly; scenes whose objects all look alike are redrawn."""
    check_num_objects(num_objects)
    while True:
        cells = sorted(int(cell) for cell in rng.choice(NUM_CELLS, size=num_objects, replace=False))
        signature = tuple(
            GridObject(cell, SIZES[int(rng.integers(len(SIZES)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))],
                       SHAPES[int(rng.integers(len(SHAPES)))])
            for cell in cells
        )
        if len({obj[1:] for obj in signature}) > 1:
            return signature


SWAP_FIELDS: dict[str, tuple[str, ...]] = {
    "colour": ("color",), "size": ("size",), "shape": ("shape",), "object": ("size", "color", "shape"),
}
"""The binding swaps of :func:`perturbations`, by kind: which attributes two cells exchange."""


def _exchange(objects: tuple[GridObject, ...], i: int, j: int, fields: tuple[str, ...]) -> tuple[GridObject, ...]:
    """``objects`` with ``fields`` of objects ``i`` and ``j`` exchanged (their cells stay)."""
    swapped = list(objects)
    swapped[i] = objects[i]._replace(**{name: getattr(objects[j], name) for name in fields})
    swapped[j] = objects[j]._replace(**{name: getattr(objects[i], name) for name in fields})
    return tuple(swapped)


def perturbations(signature: GridSignature) -> tuple[GridSignature, ...]:
    """All distinct binding swaps, in a fixed order: colours, sizes or shapes of two cells, or two whole objects."""
    signature = tuple(GridObject(*obj) for obj in signature)
    found: dict[GridSignature, None] = {}
    pairs = [(i, j) for i in range(len(signature)) for j in range(i + 1, len(signature))]
    for fields in SWAP_FIELDS.values():
        for i, j in pairs:
            found.setdefault(_exchange(signature, i, j, fields))
    found.pop(signature, None)
    return tuple(found)


def are_twins(first: GridSignature, second: GridSignature) -> bool:
    """Whether ``second`` is a single binding swap of ``first``."""
    return tuple(second) in perturbations(first)


def templates_for(num_objects: int) -> tuple[str, ...]:
    """Mention orders available for ``num_objects`` objects (all four)."""
    check_num_objects(num_objects)
    return TEMPLATES


def _order_key(template: str):
    if template in (READING, REVERSE):
        return lambda obj: obj.cell
    return lambda obj: (obj.cell % 3, obj.cell // 3)


def _phrase(obj: GridObject) -> str:
    return f"{obj.size} {obj.color} {obj.shape} at {GRID_ROWS[obj.cell // 3]} {GRID_COLUMNS[obj.cell % 3]}"


def describe(signature: GridSignature, template: str) -> str:
    """The caption of ``signature`` with the objects mentioned in ``template``'s order."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown grid template '{template}', expected one of {TEMPLATES}")
    objects = sorted((GridObject(*obj) for obj in signature), key=_order_key(template),
                     reverse=template in (REVERSE, COLUMN_REVERSE))
    return _SEPARATOR.join(_phrase(obj) for obj in objects)


def _parse_phrase(phrase: str) -> GridObject:
    words = phrase.split()
    if len(words) != 6 or words[3] != "at" or words[4] not in GRID_ROWS or words[5] not in GRID_COLUMNS:
        raise ValueError(f"cannot parse grid object phrase '{phrase}'")
    size, color, shape = words[:3]
    if size not in SIZES or color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown attribute in grid object phrase '{phrase}'")
    return GridObject(3 * GRID_ROWS.index(words[4]) + GRID_COLUMNS.index(words[5]), size, color, shape)


def parse_mentions(text: str) -> tuple[GridObject, ...]:
    """The objects of a grid caption in the order it mentions them."""
    objects = tuple(_parse_phrase(phrase) for phrase in " ".join(text.lower().split()).split(_SEPARATOR))
    if len({obj.cell for obj in objects}) != len(objects):
        raise ValueError(f"grid caption '{text}' names a cell twice")
    check_num_objects(len(objects))
    return objects


def parse_caption(text: str) -> GridSignature:
    """The signature a grid caption describes (case and spacing are ignored)."""
    return tuple(sorted(parse_mentions(text)))


def binding_negative_caption(caption: str, rng: np.random.Generator,
                             exclude: frozenset[GridSignature] = frozenset()) -> str:
    """A binding swap of the caption's scene, mentioned in the caption's own cell order.

    Swaps whose signature is in ``exclude`` are avoided unless no other swap exists.
    """
    mentions = parse_mentions(caption)
    options = perturbations(tuple(sorted(mentions)))
    if not options:
        raise ValueError(f"caption '{caption}' describes identical objects and has no binding swap")
    allowed = [other for other in options if other not in exclude] or list(options)
    negative = {obj.cell: obj for obj in allowed[int(rng.integers(len(allowed)))]}
    return _SEPARATOR.join(_phrase(negative[obj.cell]) for obj in mentions)


def swapped_caption(caption: str, kind: str, rng: np.random.Generator) -> str | None:
    """The caption with ``kind``'s attributes (:data:`SWAP_FIELDS`) exchanged between two of its cells.

    The two cells are drawn among those whose swap changes the scene; mention order and cell words stay.
    ``None`` when no two objects differ in those attributes.
    """
    fields = SWAP_FIELDS[kind]
    mentions = parse_mentions(caption)
    pairs = [(i, j) for i in range(len(mentions)) for j in range(i + 1, len(mentions))
             if any(getattr(mentions[i], name) != getattr(mentions[j], name) for name in fields)]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    return _SEPARATOR.join(_phrase(obj) for obj in _exchange(mentions, i, j, fields))


def vocabulary() -> tuple[str, ...]:
    """Every word a grid caption can contain, sorted."""
    words = set(SIZES) | set(COLORS) | set(SHAPES) | set(GRID_ROWS) | set(GRID_COLUMNS) | {"at", ","}
    return tuple(sorted(words))


def scene_layout(signature: GridSignature, render_seed: int, image_size: int = 64) -> tuple[Placement, ...]:
    """Placements in signature order: each object near its cell's centre, a few pixels of jitter."""
    rng = np.random.default_rng(render_seed)
    side = image_size / 3
    placed = []
    for obj in signature:
        radius = _RADIUS[obj.size] * side
        cx = (obj.cell % 3 + 0.5) * side + _JITTER * side * (2.0 * rng.random() - 1.0)
        cy = (obj.cell // 3 + 0.5) * side + _JITTER * side * (2.0 * rng.random() - 1.0)
        placed.append(Placement(cx, cy, radius))
    return tuple(placed)


def render_scene(signature: GridSignature, render_seed: int, image_size: int = 64) -> np.ndarray:
    """Draw a grid scene. Returns uint8 ``[H, W, 3]``."""
    objects = [(obj.color, obj.shape) for obj in signature]
    return draw_objects(objects, scene_layout(signature, render_seed, image_size), image_size)

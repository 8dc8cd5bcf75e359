"""Shapes in a row: attributes, scene signatures, binding swaps and captions (the ``row`` layout).

A scene is a row of ``num_objects`` coloured shapes on a black background. Its *signature* is
the left-to-right tuple of ``(size, color, shape)`` objects, and every caption template spells
the signature out completely, so a caption identifies exactly one scene. Binding hard negatives
(*twins*) reuse the same words with the attributes bound to different objects, which a
bag-of-words-like pooled encoder cannot tell apart. Everything is a pure function of its
arguments; nothing is downloaded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SIZES: tuple[str, ...] = ("small", "large")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40),
    "green": (40, 220, 40),
    "blue": (50, 90, 255),
    "yellow": (255, 230, 0),
    "purple": (170, 60, 230),
    "white": (255, 255, 255),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

LEFT_CHAIN = "left_chain"
RIGHT_CHAIN = "right_chain"
ENUMERATION = "enumeration"
ANCHORED = "anchored"
TEMPLATES: tuple[str, ...] = (LEFT_CHAIN, RIGHT_CHAIN, ENUMERATION, ANCHORED)

MIN_OBJECTS = 2
MAX_OBJECTS = 5

_ENUM_PREFIX = "from left to right :"


class ShapeObject(NamedTuple):
    """One object of a scene."""

    size: str
    color: str
    shape: str


Signature = tuple[ShapeObject, ...]
"""Left-to-right objects of a scene; exactly what its captions describe."""


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def check_num_objects(num_objects: int) -> None:
    if not MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in [{MIN_OBJECTS}, {MAX_OBJECTS}], got {num_objects}")


def signature_space_size(num_objects: int) -> int:
    """Number of signatures the sampler can produce (scenes of identical objects excluded)."""
    per_object = len(SIZES) * len(COLORS) * len(SHAPES)
    return per_object**num_objects - per_object


def sample_signature(rng: np.random.Generator, num_objects: int) -> Signature:
    """Draw a signature uniformly, rejecting scenes whose objects are all identical."""
    check_num_objects(num_objects)
    while True:
        signature = tuple(
            ShapeObject(
                SIZES[int(rng.integers(len(SIZES)))],
                COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))],
                SHAPES[int(rng.integers(len(SHAPES)))],
            )
            for _ in range(num_objects)
        )
        if len(set(signature)) > 1:
            return signature


def _swap_field(signature: Signature, field: str, i: int, j: int) -> Signature:
    objects = list(signature)
    vi, vj = getattr(objects[i], field), getattr(objects[j], field)
    objects[i] = objects[i]._replace(**{field: vj})
    objects[j] = objects[j]._replace(**{field: vi})
    return tuple(objects)


def _swap_positions(signature: Signature, i: int, j: int) -> Signature:
    objects = list(signature)
    objects[i], objects[j] = objects[j], objects[i]
    return tuple(objects)


def perturbations(signature: Signature) -> tuple[Signature, ...]:
    """All distinct binding swaps of ``signature``, in a fixed order.

    Each result swaps the colours, the sizes or the shapes of two objects, or swaps two
    objects' positions. Every result differs from ``signature`` yet its captions use the
    same multiset of words.
    """
    signature = tuple(ShapeObject(*obj) for obj in signature)
    found: dict[Signature, None] = {}
    pairs = [(i, j) for i in range(len(signature)) for j in range(i + 1, len(signature))]
    for field in ("color", "size", "shape"):
        for i, j in pairs:
            found.setdefault(_swap_field(signature, field, i, j))
    for i, j in pairs:
        found.setdefault(_swap_positions(signature, i, j))
    found.pop(signature, None)
    return tuple(found)


def perturb_signature(signature: Signature, rng: np.random.Generator) -> Signature:
    """A random binding swap of ``signature`` (see :func:`perturbations`)."""
    options = perturbations(signature)
    if not options:
        raise ValueError("a signature whose objects are all identical has no binding swap")
    return options[int(rng.integers(len(options)))]


def are_twins(first: Signature, second: Signature) -> bool:
    """Whether ``second`` is a single binding swap of ``first``."""
    return tuple(second) in perturbations(first)


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


def templates_for(num_objects: int) -> tuple[str, ...]:
    """Caption templates available for scenes of ``num_objects`` objects."""
    check_num_objects(num_objects)
    if num_objects <= 3:
        return TEMPLATES
    return (LEFT_CHAIN, RIGHT_CHAIN, ENUMERATION)


def _phrase(obj: ShapeObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


def describe(signature: Signature, template: str) -> str:
    """Render the caption of ``signature`` with ``template``; inverse of :func:`parse_caption`."""
    if template not in templates_for(len(signature)):
        raise ValueError(f"template '{template}' is not available for {len(signature)} objects")
    phrases = [_phrase(ShapeObject(*obj)) for obj in signature]
    if template == LEFT_CHAIN:
        return " left of ".join(phrases)
    if template == RIGHT_CHAIN:
        return " right of ".join(reversed(phrases))
    if template == ENUMERATION:
        return f"{_ENUM_PREFIX} " + " , ".join(phrases)
    text = f"{phrases[1]} with {phrases[0]} on its left"
    if len(phrases) == 3:
        text += f" and {phrases[2]} on its right"
    return text


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def caption_template(text: str) -> str:
    """Name of the template a caption was written with."""
    text = _normalise(text)
    if text.startswith(_ENUM_PREFIX):
        return ENUMERATION
    if " with " in text:
        return ANCHORED
    if " right of " in text:
        return RIGHT_CHAIN
    return LEFT_CHAIN


def _parse_phrase(phrase: str) -> ShapeObject:
    words = phrase.split()
    if len(words) != 4 or words[0] != "a":
        raise ValueError(f"cannot parse object phrase '{phrase}'")
    _, size, color, shape = words
    if size not in SIZES or color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown attribute in object phrase '{phrase}'")
    return ShapeObject(size, color, shape)


def _anchored_phrases(text: str) -> list[str]:
    anchor, rest = text.split(" with ", 1)
    if rest.endswith(" on its right"):
        left, right = rest.removesuffix(" on its right").split(" on its left and ", 1)
        return [left, anchor, right]
    if not rest.endswith(" on its left"):
        raise ValueError(f"cannot parse anchored caption '{text}'")
    return [rest.removesuffix(" on its left"), anchor]


def parse_caption(text: str) -> Signature:
    """Recover the signature a caption describes (case and spacing are ignored)."""
    text = _normalise(text)
    template = caption_template(text)
    if template == ENUMERATION:
        phrases = text.removeprefix(_ENUM_PREFIX).strip().split(" , ")
    elif template == ANCHORED:
        phrases = _anchored_phrases(text)
    elif template == RIGHT_CHAIN:
        phrases = text.split(" right of ")[::-1]
    else:
        phrases = text.split(" left of ")
    signature = tuple(_parse_phrase(phrase) for phrase in phrases)
    check_num_objects(len(signature))
    return signature

"""Synthetic "shapes" benchmark: scene sampling, rendering and captions.

A scene is a row of ``num_objects`` coloured shapes on a black background. Its
*signature* is the left-to-right tuple of ``(size, color, shape)`` objects, and every
caption template spells the signature out completely, so a caption identifies exactly
one scene. Binding hard negatives (*twins*) reuse the same words with the attributes
bound to different objects, which a bag-of-words-like pooled encoder cannot tell apart.
Everything is a pure function of its arguments; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

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

SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_OBJECTS = 2
MAX_OBJECTS = 4

_ENUM_PREFIX = "from left to right :"
_BASE_RADIUS = {"small": 5.0, "large": 9.0}
_REFERENCE_SIZE = 64
_SPLIT_STREAM = {"test": 0, "val": 1, "train": 2}
_PLACEMENT_TRIES = 16


class ShapeObject(NamedTuple):
    """One object of a scene."""

    size: str
    color: str
    shape: str


Signature = tuple[ShapeObject, ...]
"""Left-to-right objects of a scene; exactly what its captions describe."""


class Placement(NamedTuple):
    """Where one object is drawn: centre ``(cx, cy)`` and radius, in pixels."""

    cx: float
    cy: float
    radius: float


class ShapeItem(NamedTuple):
    """One image of the corpus."""

    image_id: int
    signature: Signature
    captions: tuple[str, ...]
    render_seed: int


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def _check_num_objects(num_objects: int) -> None:
    if not MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in [{MIN_OBJECTS}, {MAX_OBJECTS}], got {num_objects}")


def signature_space_size(num_objects: int) -> int:
    """Number of signatures the sampler can produce (scenes of identical objects excluded)."""
    per_object = len(SIZES) * len(COLORS) * len(SHAPES)
    return per_object**num_objects - per_object


def sample_signature(rng: np.random.Generator, num_objects: int) -> Signature:
    """Draw a signature uniformly, rejecting scenes whose objects are all identical."""
    _check_num_objects(num_objects)
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
    _check_num_objects(num_objects)
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
    _check_num_objects(len(signature))
    return signature


def binding_negative_caption(
    caption: str, rng: np.random.Generator, exclude: frozenset[Signature] = frozenset()
) -> str:
    """A caption with the same template and words as ``caption`` for a binding swap of its scene.

    Swaps whose signature is in ``exclude`` (e.g. every scene of a corpus) are avoided
    unless no other swap exists.
    """
    signature = parse_caption(caption)
    options = perturbations(signature)
    if not options:
        raise ValueError(f"caption '{caption}' describes identical objects and has no binding swap")
    allowed = [other for other in options if other not in exclude] or list(options)
    negative = allowed[int(rng.integers(len(allowed)))]
    return describe(negative, caption_template(caption))


def vocabulary() -> tuple[str, ...]:
    """Every word any caption can contain, sorted."""
    words = set(SIZES) | set(COLORS) | set(SHAPES)
    probe = tuple(ShapeObject(SIZES[0], COLOR_NAMES[0], SHAPES[0]) for _ in range(MAX_OBJECTS))
    for num_objects in range(MIN_OBJECTS, MAX_OBJECTS + 1):
        for template in templates_for(num_objects):
            words.update(describe(probe[:num_objects], template).split())
    return tuple(sorted(words))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _radius(size: str, num_objects: int, image_size: int) -> float:
    crowding = min(1.0, 4.0 / (num_objects + 1))
    return _BASE_RADIUS[size] * image_size / _REFERENCE_SIZE * crowding


def _overlaps(a: Placement, b: Placement) -> bool:
    reach = a.radius + b.radius
    return abs(a.cx - b.cx) < reach and abs(a.cy - b.cy) < reach


def scene_layout(signature: Signature, render_seed: int, image_size: int = 64) -> tuple[Placement, ...]:
    """Object placements, left to right (``cx`` strictly increasing).

    ``num_objects`` of ``num_objects + 1`` equal column slots are used in order; the
    vertical position is a nuisance variable, resampled a few times to avoid overlaps.
    """
    num_objects = len(signature)
    _check_num_objects(num_objects)
    rng = np.random.default_rng(render_seed)
    slots = num_objects + 1
    slot_width = image_size / slots
    jitter = max(1.0, image_size / _REFERENCE_SIZE)
    columns = sorted(rng.permutation(slots)[:num_objects].tolist())
    placed: list[Placement] = []
    for obj, column in zip(signature, columns):
        radius = _radius(obj[0], num_objects, image_size)
        cx = (column + 0.5) * slot_width + jitter * (2.0 * rng.random() - 1.0)
        cx = min(max(cx, radius), image_size - 1 - radius)
        for _ in range(_PLACEMENT_TRIES):
            cy = radius + (image_size - 1 - 2 * radius) * rng.random()
            candidate = Placement(cx, cy, radius)
            if not placed or not _overlaps(candidate, placed[-1]):
                break
        placed.append(candidate)
    return tuple(placed)


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, where: Placement, fill: tuple[int, int, int]) -> None:
    cx, cy, r = where
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        half = 0.886 * r  # same area as the circle
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape '{shape}'")


def render_scene(signature: Signature, render_seed: int, image_size: int = 64) -> np.ndarray:
    """Draw a scene. Returns uint8 ``[H, W, 3]`` with ``H = W = image_size``."""
    image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for obj, where in zip(signature, scene_layout(signature, render_seed, image_size)):
        _draw_object(draw, obj[2], where, COLORS[obj[1]])
    return np.array(image, dtype=np.uint8)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


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
        return render_scene(item.signature, item.render_seed, self.image_size)

    def twin_pairs(self, split: str) -> tuple[tuple[int, int], ...]:
        """``(image_id, image_id)`` pairs of a split whose signatures are binding swaps."""
        by_signature = {item.signature: item.image_id for item in self.split(split)}
        pairs = set()
        for signature, image_id in by_signature.items():
            for other in perturbations(signature):
                if other in by_signature:
                    pairs.add(tuple(sorted((image_id, by_signature[other]))))
        return tuple(sorted(pairs))


def _fresh_signature(rng: np.random.Generator, num_objects: int, used: set[Signature]) -> Signature:
    while True:
        signature = sample_signature(rng, num_objects)
        if signature not in used:
            return signature


def _sample_split_signatures(
    rng: np.random.Generator, count: int, num_objects: int, twin_prob: float, used: set[Signature]
) -> list[Signature]:
    """``count`` unused signatures; each is followed by an unused twin with ``twin_prob``."""
    signatures: list[Signature] = []
    while len(signatures) < count:
        signature = _fresh_signature(rng, num_objects, used)
        signatures.append(signature)
        used.add(signature)
        if len(signatures) < count and rng.random() < twin_prob:
            options = [other for other in perturbations(signature) if other not in used]
            if options:
                twin = options[int(rng.integers(len(options)))]
                signatures.append(twin)
                used.add(twin)
    return signatures


def _captions(rng: np.random.Generator, signature: Signature, count: int) -> tuple[str, ...]:
    templates = templates_for(len(signature))
    chosen = rng.choice(len(templates), size=count, replace=False)
    return tuple(describe(signature, templates[int(k)]) for k in chosen)


def _validate(num_objects: int, captions_per_image: int, twin_prob: float, image_size: int, total: int) -> None:
    _check_num_objects(num_objects)
    available = len(templates_for(num_objects))
    if not 2 <= captions_per_image <= available:
        raise ValueError(f"captions_per_image must be in [2, {available}] for {num_objects} objects")
    if not 0.0 <= twin_prob <= 1.0:
        raise ValueError(f"twin_prob must be in [0, 1], got {twin_prob}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if total > signature_space_size(num_objects):
        raise ValueError(
            f"{total} unique scenes requested but only {signature_space_size(num_objects)} "
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
) -> ShapesCorpus:
    """Generate the benchmark; a pure function of its arguments.

    Splits are sampled test first, then val, then train, each from its own random
    stream, so the test split does not depend on ``num_train`` or ``num_val``. Twins
    (binding swaps) count towards their split's size and always stay in that split.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if min(counts.values()) < 0 or seed < 0:
        raise ValueError("seed and split sizes must be non-negative")
    _validate(num_objects, captions_per_image, twin_prob, image_size, sum(counts.values()))
    used: set[Signature] = set()
    signatures: dict[str, list[Signature]] = {}
    rngs = {name: np.random.default_rng([seed, stream]) for name, stream in _SPLIT_STREAM.items()}
    for name in sorted(_SPLIT_STREAM, key=_SPLIT_STREAM.__getitem__):
        signatures[name] = _sample_split_signatures(rngs[name], counts[name], num_objects, twin_prob, used)
    splits: dict[str, tuple[ShapeItem, ...]] = {}
    next_id = 0
    for name in SPLITS:
        rng = rngs[name]
        items = []
        for signature in signatures[name]:
            captions = _captions(rng, signature, captions_per_image)
            items.append(ShapeItem(next_id, signature, captions, int(rng.integers(2**31 - 1))))
            next_id += 1
        splits[name] = tuple(items)
    return ShapesCorpus(seed, num_objects, captions_per_image, twin_prob, image_size, **splits)

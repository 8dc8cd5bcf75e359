"""Drawing shapes scenes: where each object goes, and the pixels (row layout; helpers for others)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from distill.data.shapes.row import COLORS, Signature, check_num_objects

_BASE_RADIUS = {"small": 5.0, "large": 9.0}
_REFERENCE_SIZE = 64
_PLACEMENT_TRIES = 16


class Placement(NamedTuple):
    """Where one object is drawn: centre ``(cx, cy)`` and radius, in pixels."""

    cx: float
    cy: float
    radius: float


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
    check_num_objects(num_objects)
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



def draw_objects(objects: Sequence[tuple[str, str]], placements: Sequence[Placement], image_size: int) -> np.ndarray:
    """Draw ``(color, shape)`` objects at ``placements`` on black. Returns uint8 ``[H, W, 3]``."""
    image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for (color, shape), where in zip(objects, placements):
        _draw_object(draw, shape, where, COLORS[color])
    return np.array(image, dtype=np.uint8)


def render_scene(signature: Signature, render_seed: int, image_size: int = 64) -> np.ndarray:
    """Draw a row scene. Returns uint8 ``[H, W, 3]`` with ``H = W = image_size``."""
    objects = [(obj[1], obj[2]) for obj in signature]
    return draw_objects(objects, scene_layout(signature, render_seed, image_size), image_size)

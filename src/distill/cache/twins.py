"""How many of each anchor's cached candidates are its binding twin (shapes data): what a refresh should raise.

A binding twin of a scene is a single binding swap of it (:func:`distill.data.shapes.layout_are_twins`): two
cells exchange colours, sizes, shapes or whole objects. The teacher's edge over a pooled student is on
twins, so a cache passes it on only where the twins are among the candidates. For an a2b (image) anchor a
candidate is a twin when it is a caption of the twin image; for a b2a (caption) anchor, when it is the
twin image of its own image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distill.cache.format import DIRECTIONS, TeacherCache
from distill.data.shapes import ShapesCorpus, get_layout, layout_are_twins

__all__ = ["TwinShare", "twin_counts", "twin_share", "twins_in_split"]


def twin_counts(cache: TeacherCache, corpus: ShapesCorpus, k: int | None = None) -> dict[str, Tensor]:
    """Per direction, ``[N_d]`` long: how many of each anchor's first ``k`` (default all) cached candidates are
    its binding twin. Ids are the corpus's (images: ``image_id``; captions: ``image_id * per_image + j``)."""
    per_image = corpus.captions_per_image
    signature = {item.image_id: item.signature for item in corpus.items()}
    counts = {}
    for direction in DIRECTIONS:
        candidates = cache.candidate_ids[direction][:, :k]
        anchors = cache.anchor_ids[direction]
        anchor_images = anchors if direction == "a2b" else anchors // per_image
        candidate_images = candidates // per_image if direction == "a2b" else candidates
        rows = []
        for image, row in zip(anchor_images.tolist(), candidate_images.tolist()):
            own = signature[image]
            rows.append(sum(c >= 0 and layout_are_twins(own, signature[c], corpus.layout) for c in row))
        counts[direction] = torch.tensor(rows, dtype=torch.long)
    return counts


def twins_in_split(corpus: ShapesCorpus, split: str = "train") -> dict[int, bool]:
    """``{image id: whether another image of the split is its binding twin}``: which anchors can have one."""
    present = {item.signature for item in corpus.split(split)}
    perturbations = get_layout(corpus.layout).perturbations
    return {item.image_id: any(other in present for other in perturbations(item.signature))
            for item in corpus.split(split)}


@dataclass(frozen=True)
class TwinShare:
    """Of ``anchors`` anchors of one direction, ``possible`` have a twin in the split, ``with_twin`` have at least
    one twin among their candidates; ``twins`` candidates are twins in all."""

    anchors: int
    possible: int
    with_twin: int
    twins: int

    @property
    def share(self) -> float:
        """Share of anchors with their twin among their candidates, in [0, 1]."""
        return self.with_twin / max(self.anchors, 1)


def twin_share(cache: TeacherCache, corpus: ShapesCorpus, k: int | None = None) -> dict[str, TwinShare]:
    """:func:`twin_counts` summed per direction (the cache's split is ``train``)."""
    possible = twins_in_split(corpus, cache.manifest.get("split", "train"))
    shares = {}
    for direction, counts in twin_counts(cache, corpus, k).items():
        anchors = cache.anchor_ids[direction]
        images = anchors if direction == "a2b" else anchors // corpus.captions_per_image
        can = sum(possible.get(image, False) for image in images.tolist())
        shares[direction] = TwinShare(int(counts.numel()), can, int((counts > 0).sum()), int(counts.sum()))
    return shares

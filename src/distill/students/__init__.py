"""Students: trainable dual encoders built from timm, transformers and CLIP models."""

from distill.pretrained import minilm_path
from distill.students.clip import CLIPDualEncoder
from distill.students.dual_encoder import DualEncoder
from distill.students.text import TextDualEncoder
from distill.students.towers import TimmImageTower, Tower, TransformersTextTower, count_parameters

__all__ = [
    "CLIPDualEncoder",
    "DualEncoder",
    "TextDualEncoder",
    "TimmImageTower",
    "Tower",
    "TransformersTextTower",
    "count_parameters",
    "minilm_path",
]

"""Students: trainable dual encoders built from timm and transformers towers."""

from distill.students.dual_encoder import DualEncoder
from distill.students.towers import TimmImageTower, Tower, TransformersTextTower, count_parameters

__all__ = ["DualEncoder", "TimmImageTower", "Tower", "TransformersTextTower", "count_parameters"]

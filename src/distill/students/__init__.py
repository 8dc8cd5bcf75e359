"""Students: trainable dual encoders built from timm, transformers and CLIP models."""

from distill.pretrained import minilm_path
from distill.students.clip import CLIPDualEncoder
from distill.students.dual_encoder import DualEncoder
from distill.students.late_interaction import LateInteractionEncoder, TokenEmbeddings, TransformersTokenTower
from distill.students.text import TextDualEncoder
from distill.students.towers import TimmImageTower, Tower, TransformersTextTower, count_parameters

__all__ = [
    "CLIPDualEncoder",
    "DualEncoder",
    "LateInteractionEncoder",
    "TextDualEncoder",
    "TimmImageTower",
    "TokenEmbeddings",
    "Tower",
    "TransformersTextTower",
    "TransformersTokenTower",
    "count_parameters",
    "minilm_path",
]

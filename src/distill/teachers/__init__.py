"""Teachers: frozen cross-encoders that score (a, b) pairs."""

from distill.teachers.base import Teacher, is_frozen
from distill.teachers.hf_blip import BlipITMTeacher
from distill.teachers.hf_cross_encoder import TextCrossEncoderTeacher
from distill.teachers.hf_vilt import ViltRetrievalTeacher
from distill.teachers.scoring import TEACHER_PRECISIONS, TeacherScorer
from distill.teachers.shapes import ShapesCrossEncoder

__all__ = [
    "BlipITMTeacher",
    "ShapesCrossEncoder",
    "Teacher",
    "TextCrossEncoderTeacher",
    "ViltRetrievalTeacher",
    "is_frozen",
    "TEACHER_PRECISIONS",
    "TeacherScorer",
]

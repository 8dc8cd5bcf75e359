"""Teachers: frozen cross-encoders that score (a, b) pairs."""

from distill.teachers.base import Teacher, is_frozen, score_in_chunks, select_rows
from distill.teachers.shapes import ShapesCrossEncoder

__all__ = ["ShapesCrossEncoder", "Teacher", "is_frozen", "score_in_chunks", "select_rows"]

"""Serving: student-only export (safetensors, ONNX, model card), loading it back, and search indexes."""

from distill.serving.export import ExportResult, TrainingRecord, export_student
from distill.serving.loading import load_student, load_tokenizer, read_student_config

__all__ = ["ExportResult", "TrainingRecord", "export_student", "load_student", "load_tokenizer", "read_student_config"]

"""distill: knowledge distillation from cross-encoder teachers into fast retrieval students."""

__version__ = "0.1.0"

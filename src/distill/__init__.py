"""distill: knowledge distillation from cross-encoder teachers into fast retrieval students."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Lazy access to ``load_student`` / ``load_tokenizer`` / ``open_searcher`` (kept out of ``import distill``)."""
    if name in ("load_student", "load_tokenizer"):
        from distill.serving import loading

        return getattr(loading, name)
    if name in ("open_searcher", "Searcher"):
        from distill.serving.index import searcher

        return getattr(searcher, name)
    raise AttributeError(f"module 'distill' has no attribute '{name}'")

"""Tiny specs and builders shared by the deployment tests."""

from __future__ import annotations

from typing import Any

BERT_TINY = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64)

DENSE_SPEC: dict[str, Any] = {
    "class_path": "distill.students.DualEncoder",
    "init_args": {
        "embed_dim": 16,
        "tower_a": {"class_path": "distill.students.TimmImageTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.TransformersTextTower", "init_args": {"config": BERT_TINY}},
    },
}

SPARSE_SPEC: dict[str, Any] = {
    "class_path": "distill.students.sparse.SparseDualEncoder",
    "init_args": {
        "tower_a": {"class_path": "distill.students.sparse.TimmTokenTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.sparse.MLMTextTower", "init_args": {"config": BERT_TINY}},
    },
}

TINY_STUDENT_OVERRIDES = [
    "--model.init_args.student.init_args.tower_a.init_args.model_name", "resnet10t",
    "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size", "32",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_hidden_layers", "1",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads", "2",
    "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size", "64",
]

TINY_DATA_OVERRIDES = [
    "--data.init_args.num_train", "32", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
    "--data.init_args.image_size", "32", "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8",
]

QUIET_TRAINER = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def build(spec: dict[str, Any]) -> Any:
    from distill.export import instantiate

    return instantiate(spec).eval()

"""``python -m distill export --ckpt <run>/last.ckpt --out exports/x``: export a trained student.

Rebuilds the student from the recipe the run was trained with (``--config``, by default the
``config.yaml`` LightningCLI wrote into the run's log folder), loads the checkpoint's ``student.*``
weights (``torch.load(weights_only=True)``) and writes the export folder in one step
(:func:`distill.serving.export.export_student`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from distill.cli.args import CommandParser, positive_int
from distill.cli.recipe import find_run_config, read_recipe
from distill.errors import InputError, RecipeError
from distill.instantiate import instantiate
from distill.io import read_json
from distill.outputs import claim_output
from distill.serving.card import run_metrics
from distill.serving.export import ExportResult, TrainingRecord, export_student
from distill.serving.onnx import DEFAULT_OPSET, SUPPORTED_OPSETS
from distill.students.weights import read_student_checkpoint

__all__ = ["build_parser", "export_checkpoint", "main"]


def export_checkpoint(ckpt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      config: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
                      metrics: dict[str, float] | None = None, **options: object) -> ExportResult:
    """Export the student of a ``DistillationModule`` checkpoint (``options`` go to :func:`export_student`)."""
    try:
        run_config: Path | None = find_run_config(ckpt_path)
    except RecipeError:
        if config is None:
            raise
        run_config = None
    config_path = Path(config) if config is not None else run_config
    assert config_path is not None
    recipe = read_recipe(config_path, overrides)
    weights, info = read_student_checkpoint(Path(ckpt_path), option="--ckpt")
    student = instantiate(recipe.student)
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"--ckpt '{ckpt_path}' does not match the student of '{config_path}': missing "
                         f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}; pass --config <the recipe used for "
                         "training>")
    training = {key: int(info[key]) for key in ("epoch", "global_step") if isinstance(info.get(key), int)}
    found = run_metrics(run_config.parent) if run_config is not None else {}
    record = TrainingRecord(recipe, dict(metrics) if metrics is not None else found, training)
    datamodule = None
    if recipe.data is not None:
        import lightning as L

        datamodule = instantiate(recipe.data, L.LightningDataModule)
    return export_student(student, out_dir, recipe.student, datamodule, record, **options)  # type: ignore[arg-type]


def opset(text: str) -> int:
    """An ``argparse`` type: an ONNX opset the tower graphs can be exported at (``SUPPORTED_OPSETS``)."""
    value = positive_int(text)
    if value not in SUPPORTED_OPSETS:
        raise argparse.ArgumentTypeError(f"opset {value} is not supported: choose {SUPPORTED_OPSETS[0]} to "
                                         f"{SUPPORTED_OPSETS[-1]} (default {DEFAULT_OPSET})")
    return value


MAX_IMAGE_SIZE = 4096  # one traced 3 x 4096 x 4096 float image is 200 MB; 100,000 px would ask for 120 GB


def image_size(text: str) -> int:
    """An ``argparse`` type: an image side in pixels, 1 to :data:`MAX_IMAGE_SIZE`."""
    value = positive_int(text)
    if value > MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_IMAGE_SIZE} pixels, got {value} (the ONNX export "
                                         "traces one image of this side): give the side the student was trained at")
    return value


def build_parser() -> CommandParser:
    parser = CommandParser(prog="distill export", description=__doc__.split("\n\n")[0],
                           epilog="Other --key value arguments override the recipe, as in `distill fit`.")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a DistillationModule run")
    parser.add_argument("--out", required=True, help="export folder (built aside, then put in place in one step)")
    parser.add_argument("--config", help="recipe used for training (default: config.yaml of the run's log folder)")
    parser.add_argument("--metrics", help="JSON file of {metric: value} to put in the model card")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX graphs")
    parser.add_argument("--opset", type=opset, default=DEFAULT_OPSET,
                        help=f"ONNX opset of the tower graphs, {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]} "
                             f"(default {DEFAULT_OPSET})")
    parser.add_argument("--image-size", type=image_size,
                        help=f"image side of the ONNX image graph, at most {MAX_IMAGE_SIZE} (default: the data's)")
    parser.add_argument("--top-k-a", type=positive_int, help="sparse students: keep the k largest a-side weights")
    parser.add_argument("--top-k-b", type=positive_int, help="sparse students: keep the k largest b-side weights")
    return parser


def main(argv: list[str]) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    metrics = None
    if args.metrics:
        metrics = read_json(args.metrics)
        if not isinstance(metrics, dict):
            raise InputError(f"--metrics '{args.metrics}' must hold a JSON object of metric -> value")
    inputs = {"--ckpt": args.ckpt, "--config": args.config, "--metrics": args.metrics}
    with claim_output(args.out, "export", "--out", inputs):
        result = export_checkpoint(args.ckpt, args.out, config=args.config, overrides=overrides, metrics=metrics,
                                   onnx=not args.no_onnx, opset=args.opset, image_size=args.image_size,
                                   top_k_a=args.top_k_a, top_k_b=args.top_k_b)
    print(f"exported the student to {result.out_dir}: {', '.join(result.files)}")

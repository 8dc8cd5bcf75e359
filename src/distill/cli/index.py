"""``python -m distill index``: encode a split's b side with an exported student into an index folder."""

from __future__ import annotations

import sys

from distill.cli.args import CommandParser, positive_int
from distill.cli.recipe import load_datamodule
from distill.io import read_json
from distill.serving.index.folder import INDEX_META, build_index

__all__ = ["build_parser", "main"]


def build_parser() -> CommandParser:
    parser = CommandParser(prog="distill index", description="Encode a split's b side into an index folder.")
    parser.add_argument("--student", required=True, help="export folder written by `distill export`")
    parser.add_argument("--data", required=True, help="recipe or data yaml (class_path + init_args)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="index folder (built aside, then put in place in one step)")
    parser.add_argument("--chunk-size", type=positive_int, default=256, help="texts encoded per forward pass")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--weights", choices=("float32", "uint8"), default="float32",
                        help="sparse students: posting weights, exact float32 or uint8 impacts (3 bytes per posting)")
    parser.add_argument("--top-k", type=positive_int, help="sparse students: keep each item's k largest weights")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    out = build_index(args.student, load_datamodule(args.data), args.split, args.out, args.chunk_size,
                      progress=not args.no_progress and sys.stderr.isatty(), weights=args.weights,
                      top_k=args.top_k, source=args.data)
    meta = read_json(out / INDEX_META)
    print(f"indexed {meta['count']} items ({meta['kind']}, {meta['bytes']:,} bytes) into {out}")

"""``python -m distill search``: the top-k of an index for a text or image query, optionally re-ranked."""

from __future__ import annotations

from distill.cli.args import CommandParser, positive_int
from distill.serving.index.backends import BACKENDS
from distill.serving.index.query import format_hits, search

__all__ = ["build_parser", "main"]


def build_parser() -> CommandParser:
    parser = CommandParser(prog="distill search", description="Search an index built by `distill index`.")
    parser.add_argument("--index", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--query", help="text query")
    group.add_argument("--image", help="image file query (encoded with tower a)")
    parser.add_argument("-k", "--k", type=positive_int, default=10)
    parser.add_argument("--student", help="export folder (default: the one the index was built with)")
    parser.add_argument("--rerank-with", help="ShapesCrossEncoder folder (save_pretrained) re-ranking the top-k")
    parser.add_argument("--backend", choices=sorted(BACKENDS),
                        help="the backend the index was built with (default: read from the index)")
    parser.add_argument("--url", help="Qdrant indexes: reach the server at this address instead of the one built with")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    hits = search(args.index, args.query, args.image, args.k, args.student, args.rerank_with, args.backend, args.url)
    print(format_hits(hits))

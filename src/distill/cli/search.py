"""``python -m distill search``: the top-k of an index for text or image queries, optionally re-ranked.

The index and the student are opened once for all the queries: repeat ``--query`` / ``--image``, pass
``--queries-file`` (one query per line; ``-`` reads stdin), or pipe queries on stdin. ``--json`` prints one
JSON line per query (``{"query"|"image", "hits": [{"rank", "id", "a_id", "doc_id"?, "score", "text"}, ...]}``;
``doc_id``: the corpus's document id, for indexes of a BEIR corpus).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.cli.args import CommandParser, positive_int
from distill.errors import InputError
from distill.serving.index.backends import BACKENDS
from distill.serving.index.query import Hit, format_hits, rerank
from distill.serving.index.query_tokens import check_query_tokens

__all__ = ["build_parser", "main"]


def build_parser() -> CommandParser:
    parser = CommandParser(prog="distill search", description="Search an index built by `distill index`.")
    parser.add_argument("--index", required=True)
    parser.add_argument("--query", action="append", help="text query (repeat for several)")
    parser.add_argument("--image", action="append", help="image file query, encoded with tower a (repeat them)")
    parser.add_argument("--queries-file", help="text queries, one per line (blank lines skipped); - reads stdin")
    parser.add_argument("-k", "--k", type=positive_int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON line per query instead of tables")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="queries encoded per forward pass")
    parser.add_argument("--student", help="export folder (default: the one the index was built with)")
    parser.add_argument("--rerank-with", help="cross-encoder folder re-ranking the top-k: a ShapesCrossEncoder for "
                                              "--image, a text cross-encoder (save_pretrained) for text queries")
    parser.add_argument("--backend", choices=sorted(BACKENDS),
                        help="the backend the index was built with (default: read from the index)")
    parser.add_argument("--url", help="Qdrant indexes: reach the server at this address instead of the one built with")
    parser.add_argument("--token-candidates", type=positive_int,
                        help="late-interaction indexes: nearest stored tokens each query token retrieves before exact "
                             "rescoring (default: the value the index was built with)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the student's export run code it names (class paths outside distill, "
                             "trust_remote_code, auto_map); only for an export you trust")
    return parser


def _text_lines(source: str) -> list[str]:
    """The non-blank lines of ``--queries-file`` (``-``: stdin)."""
    if source == "-":
        return [line.strip() for line in sys.stdin if line.strip()]
    path = Path(source)
    if not path.is_file():
        raise InputError(f"--queries-file '{path}' does not exist: give a text file with one query per line")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise InputError(f"--queries-file '{path}' is not UTF-8 text: give one query per line") from None


def _queries(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The text queries and the image files of the command line, a file or stdin."""
    texts, images = list(args.query or []), list(args.image or [])
    if any(not text.strip() for text in texts):
        raise InputError("--query is empty: give the text to search for")
    source = args.queries_file
    if source is None and not texts and not images and not sys.stdin.isatty():
        source = "-"
    if source is not None:
        texts += _text_lines(source)
    if texts and images:
        raise InputError("give text queries (--query, --queries-file) or --image, not both")
    if not texts and not images:
        raise InputError("give --query, --image or --queries-file (or text queries on stdin), one query per line")
    return texts, images


def _json_line(query: str, key: str, hits: list[Hit]) -> str:
    rows = [{"rank": hit.rank, "id": hit.item.id, "a_id": hit.item.a_id,
             **({"doc_id": hit.item.doc_id} if hit.item.doc_id is not None else {}), "score": hit.score,
             "text": hit.item.text, **({"teacher_score": hit.teacher_score} if hit.teacher_score is not None else {})}
            for hit in hits]
    return json.dumps({key: query, "hits": rows}, ensure_ascii=False)


def main(argv: list[str]) -> None:
    from distill.serving.index.searcher import open_searcher

    args = build_parser().parse_args(argv)
    texts, images = _queries(args)
    with open_searcher(args.index, args.student, args.backend, args.url, args.trust_remote_code,
                       args.token_candidates) as searcher:
        for text in texts if searcher.tokenizer is not None else []:
            check_query_tokens(searcher.tokenizer, text, "query" if args.queries_file or not args.query else "--query")
        results = searcher.search(texts or None, images or None, args.k, args.batch_size)
    queries, key = (texts, "query") if texts else (images, "image")
    if args.rerank_with is not None:
        results = [rerank(hits, args.rerank_with, None if texts else query, str(searcher.student_dir),
                          args.trust_remote_code, query if texts else None)
                   for hits, query in zip(results, queries)]
    for number, (query, hits) in enumerate(zip(queries, results)):
        if args.json:
            print(_json_line(query, key, hits))
        elif len(queries) == 1:
            print(format_hits(hits))
        else:
            print(("\n" if number else "") + f"# {key}: {query}\n{format_hits(hits)}")

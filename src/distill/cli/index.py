"""``python -m distill index``: encode a split's b side with an exported student into an index folder."""

from __future__ import annotations

import sys

from distill.cli.args import CommandParser, positive_int
from distill.cli.recipe import load_datamodule
from distill.io import read_json
from distill.outputs import claim_output
from distill.serving.index.backends import BACKENDS, EXTRAS, FAISS_TYPES, FLOAT32_BUDGET, VECTOR_DTYPES, \
    BackendSettings
from distill.serving.index.folder import INDEX_META, build_index
from distill.serving.index.late import TOKEN_CANDIDATES

__all__ = ["build_parser", "main"]


def build_parser() -> CommandParser:
    defaults = BackendSettings()
    parser = CommandParser(prog="distill index", description="Encode a split's b side into an index folder.")
    parser.add_argument("--student", required=True, help="export folder written by `distill export`")
    parser.add_argument("--data", required=True, help="recipe or data yaml (class_path + init_args)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="index folder (built aside, then put in place in one step)")
    parser.add_argument("--chunk-size", type=positive_int, default=256, help="texts encoded per forward pass")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the export run code it names (class paths outside distill, trust_remote_code, "
                             "auto_map); only for an export you trust")
    parser.add_argument("--backend", choices=sorted(BACKENDS),
                        help="faiss (dense; the dense default when installed), numpy (exact dense search, or "
                             "distill's inverted index: the sparse default), qdrant (dense or sparse; embedded, or "
                             "a server with --url), seismic (sparse; Seismic's approximate inverted index)")
    parser.add_argument("--weights", choices=("float32", "uint8"), default="float32",
                        help="sparse students, numpy backend: posting weights, exact float32 or uint8 impacts")
    parser.add_argument("--top-k", type=positive_int, help="sparse students: keep each item's k largest weights")
    parser.add_argument("--vector-dtype", choices=VECTOR_DTYPES, default=defaults.vector_dtype,
                        help=f"dense students, numpy and faiss backends: stored precision. auto (default): float32 "
                             f"while the N x D float32 vectors take at most {FLOAT32_BUDGET >> 30} GiB (fastest exact "
                             "search), float16 above it (half the memory, about 2**-11 relative error per "
                             "coordinate). Late-interaction students: the stored token vectors, float16 unless "
                             "float32")
    parser.add_argument("--token-candidates", type=positive_int,
                        help=f"late-interaction students: nearest stored tokens each query token retrieves before "
                             f"exact rescoring, the index's search default (default {TOKEN_CANDIDATES}; "
                             "docs/deployment.md)")
    faiss = parser.add_argument_group("faiss")
    faiss.add_argument("--faiss-type", choices=FAISS_TYPES, default=defaults.faiss_type,
                       help="flat: exact IndexFlatIP; ivf / hnsw: approximate")
    faiss.add_argument("--nlist", type=positive_int, help="ivf: number of lists (default 4 sqrt(N))")
    faiss.add_argument("--nprobe", type=positive_int, default=defaults.nprobe, help="ivf: lists searched per query")
    faiss.add_argument("--pq", type=positive_int, help="ivf: product quantisation with this many 8-bit sub-vectors")
    faiss.add_argument("--hnsw-m", type=positive_int, default=defaults.hnsw_m, help="hnsw: links per node")
    faiss.add_argument("--ef-construction", type=positive_int, default=defaults.ef_construction)
    faiss.add_argument("--ef-search", type=positive_int, default=defaults.ef_search, help="hnsw: candidates searched")
    qdrant = parser.add_argument_group("qdrant")
    qdrant.add_argument("--url", help="Qdrant server or cluster, e.g. http://localhost:6333 (default: embedded in "
                                      "--out); the API key is read from QDRANT_API_KEY")
    qdrant.add_argument("--collection", default=defaults.collection, help="collection alias on the server")
    qdrant.add_argument("--exact", action="store_true", help="server: scan every point instead of Qdrant's HNSW")
    qdrant.add_argument("--shards", type=positive_int, help="server: the collection's shard_number (a cluster "
                                                           "spreads the shards over its nodes)")
    qdrant.add_argument("--replicas", type=positive_int, help="server: the collection's replication_factor")
    seismic = parser.add_argument_group("seismic")
    seismic.add_argument("--query-cut", type=positive_int, default=defaults.query_cut,
                         help="the query's largest weights searched (default 10)")
    seismic.add_argument("--heap-factor", type=float, default=defaults.heap_factor,
                         help="> 0 (default 0.9); below 1 visits more blocks: slower, higher recall")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    settings = BackendSettings(backend=args.backend, faiss_type=args.faiss_type, nlist=args.nlist,
                               nprobe=args.nprobe, pq=args.pq, hnsw_m=args.hnsw_m,
                               ef_construction=args.ef_construction, ef_search=args.ef_search, url=args.url,
                               collection=args.collection, exact=args.exact, shards=args.shards,
                               replicas=args.replicas, query_cut=args.query_cut, heap_factor=args.heap_factor,
                               vector_dtype=args.vector_dtype)
    with claim_output(args.out, "index", "--out", {"--student": args.student, "--data": args.data}):
        out = build_index(args.student, load_datamodule(args.data), args.split, args.out, args.chunk_size,
                          progress=not args.no_progress, weights=args.weights,
                          top_k=args.top_k, source=args.data, settings=settings,
                          trust_remote_code=args.trust_remote_code, token_candidates=args.token_candidates)
    meta = read_json(out / INDEX_META)
    url = (meta.get("backend_settings") or {}).get("url")
    where = (f"into the Qdrant collection {meta['collection_name']} (alias {args.collection}) at {url}; manifest "
             f"and items in {out}") if url else f"({meta['bytes']:,} bytes) into {out}"
    tokens = f", {meta['tokens']:,} token vectors" if "tokens" in meta else ""
    print(f"indexed {meta['count']} items ({meta['kind']}{tokens}, {meta['backend']}) {where}")
    if args.backend is None and meta["kind"] == "dense" and meta["backend"] == "numpy":
        print(f"note: {EXTRAS['faiss'][1].split('==')[0]} is not installed, so the dense index uses the numpy backend "
              f"(the same results, slower): pip install '{EXTRAS['faiss'][1]}'", file=sys.stderr)

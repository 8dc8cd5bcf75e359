"""Recall of a trained sparse student served from the inverted index: exact, uint8 and pruned postings.

    python benchmarks/sparse_serving.py --student exports/sparse-kl     # an export of a sparse student

The student (an export folder written by ``python -m distill export``) encodes a split of the data
(``--data``, default ``configs/demo/data.yaml``, split ``test``) once. Each direction then searches one
side with the other: image -> caption queries images against an index of the caption vectors, caption
-> image queries captions against an index of the image vectors. Rows:

* exact scoring: the dense ``[Na, Nb]`` matrix of dot products of the same vectors, ranked with
  :func:`distill.evaluation.retrieval_metrics` (the recall training's evaluation reports);
* the index with float32 postings (:class:`distill.serving.index.SparseIndex`), which must give the same recall;
* uint8 impacts (3 bytes per posting), then uint8 with each indexed vector pruned to its k largest
  weights (``--top-k``); queries always keep every weight.

Recall@K is computed from the index's own top-10 lists. Bytes per item are the index's arrays
(``SparseIndex.nbytes``) divided by the items indexed, next to a float32 dense vector of the student's
width (``4 V`` bytes). Writes the table to stdout and its section of ``docs/benchmarks.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.recipe import load_datamodule  # noqa: E402
from distill.evaluation import DEFAULT_KS, SplitBuffer, retrieval_metrics  # noqa: E402
from distill.serving import load_student  # noqa: E402
from distill.serving.index import SparseIndex  # noqa: E402
from distill.cli.report import update_markdown_section  # noqa: E402

COLUMNS = ("i->t R@1", "i->t R@5", "i->t R@10", "t->i R@1", "t->i R@5", "t->i R@10", "RSUM",
           "nnz/caption", "nnz/image", "bytes/caption", "bytes/image")


@torch.no_grad()
def encode_split(student: torch.nn.Module, data: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image vectors [Na, V], caption vectors [Nb, V], b_to_a [Nb])`` of one split, float32."""
    datamodule = load_datamodule(data)
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    buffer = SplitBuffer()
    for batch in loader:
        rows = buffer.new_a(batch["a_id"])
        buffer.add_a(batch["a_id"][rows], student.encode_a({k: v[rows] for k, v in batch["a"].items()}))
        buffer.add_b(batch["b_id"], student.encode_b(batch["b"]))
        buffer.add_pairs(batch["a_id"], batch["b_id"])
    split_vectors = buffer.finalize()
    return split_vectors.a.numpy(), torch.cat(split_vectors.b).numpy(), split_vectors.b_owner.numpy()


def recall_from_lists(rows: np.ndarray, hit: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """``rows [Q, k]`` retrieved ids and ``hit [Q, k]`` bool -> ``{K: % of queries with a hit in the top K}``."""
    first = np.where(hit.any(1), hit.argmax(1), rows.shape[1])
    return {k: 100.0 * float((first < k).mean()) for k in ks}


def index_row(images: np.ndarray, captions: np.ndarray, b_to_a: np.ndarray, weights: str,
              top_k: int | None) -> dict[str, float]:
    """Recall both ways through two indexes (captions, images) of one posting format."""
    ks, depth = DEFAULT_KS, max(DEFAULT_KS)
    caption_index = SparseIndex.from_vectors(captions, weights=weights, top_k=top_k)
    image_index = SparseIndex.from_vectors(images, weights=weights, top_k=top_k)
    _, caption_rows = caption_index.search(images, k=depth)  # image -> caption
    _, image_rows = image_index.search(captions, k=depth)  # caption -> image
    a2b = recall_from_lists(caption_rows, b_to_a[caption_rows] == np.arange(len(images))[:, None], ks)
    b2a = recall_from_lists(image_rows, image_rows == b_to_a[:, None], ks)
    row = {f"i->t R@{k}": a2b[k] for k in ks} | {f"t->i R@{k}": b2a[k] for k in ks}
    row["RSUM"] = sum(a2b.values()) + sum(b2a.values())
    row["nnz/caption"] = caption_index.nnz / len(caption_index)
    row["nnz/image"] = image_index.nnz / len(image_index)
    row["bytes/caption"] = caption_index.nbytes / len(caption_index)
    row["bytes/image"] = image_index.nbytes / len(image_index)
    return row


def exact_row(images: np.ndarray, captions: np.ndarray, b_to_a: np.ndarray) -> dict[str, float]:
    metrics = retrieval_metrics(torch.from_numpy(images @ captions.T), torch.from_numpy(b_to_a).long())
    row = {f"i->t R@{k}": metrics[f"a2b_R@{k}"] for k in DEFAULT_KS}
    row |= {f"t->i R@{k}": metrics[f"b2a_R@{k}"] for k in DEFAULT_KS}
    row["RSUM"] = metrics["rsum"]
    row["nnz/caption"] = float((captions > 0).sum(1).mean())
    row["nnz/image"] = float((images > 0).sum(1).mean())
    row["bytes/caption"] = row["bytes/image"] = 4.0 * captions.shape[1]  # a dense float32 vector
    return row


def cell(key: str, value: float) -> str:
    return f"{value:.0f}" if key.startswith("bytes") else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="export folder of a sparse student (distill export)")
    parser.add_argument("--data", default=str(REPO / "configs" / "demo" / "data.yaml"))
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--top-k", type=int, nargs="+", default=[32, 16, 8], help="pruned variants (uint8)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)

    student = load_student(args.student)
    if not hasattr(student, "embedding_stats"):
        parser.error(f"--student {args.student} is not a sparse student ({type(student).__name__})")
    images, captions, b_to_a = encode_split(student, args.data, args.split)
    rows = [("exact dot products (training's evaluation)", exact_row(images, captions, b_to_a)),
            ("index, float32 postings", index_row(images, captions, b_to_a, "float32", None)),
            ("index, uint8 impacts", index_row(images, captions, b_to_a, "uint8", None))]
    rows += [(f"index, uint8, top-{k} per indexed item", index_row(images, captions, b_to_a, "uint8", k))
             for k in args.top_k]

    header = "| variant | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(key, row[key]) for key in COLUMNS) + " |" for name, row in rows]
    print("\n".join(lines))
    exact, float_index = rows[0][1], rows[1][1]
    same = all(abs(exact[key] - float_index[key]) < 1e-3 for key in COLUMNS[:7])  # percent; float32 vs float64 means
    notes = [
        f"Split: {args.split}, {len(images)} images and {len(captions)} captions; V = {captions.shape[1]} "
        f"(the student's vocabulary). Queries keep every weight; pruning applies to the indexed side.",
        "The float32 index gives " + ("exactly the recall of exact scoring." if same else
                                      "a recall different from exact scoring (ties broken in another order)."),
        "Bytes per item: the index's arrays over the items indexed (uint8: 3 bytes per posting plus the "
        f"offsets); the exact row lists a dense float32 vector of width V ({4 * captions.shape[1]} bytes).",
    ]
    for note in notes:
        print(note)
    command = "python benchmarks/sparse_serving.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = ("## Sparse student served from the inverted index\n\n"
               f"Command: `{command.strip()}`\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    update_markdown_section(args.out, "sparse-serving", section)
    print(f"[sparse_serving] wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()

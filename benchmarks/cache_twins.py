"""How many of each anchor's cached candidates are its binding twin, per teacher cache (shapes data).

    python benchmarks/cache_twins.py caches/grid-cprd-k8 caches/grid-cprd-k8-step300 [--k 2 --k 8]

A cache passes on the teacher's edge on binding only where an anchor's binding twin (a single binding swap of
its scene: :mod:`distill.cache.twins`) is among its candidates; a refresh by a student that ranks better should
raise that share. The corpus is generated again from each cache's manifest (its data's init args), so no recipe
is needed. Per cache and direction: the share of anchors with their twin among their first ``k`` candidates
(random batching brings the first ``candidates_per_anchor``), the same share of the anchors whose scene has a
twin in the split at all, the twins per anchor, and for a refresh the pairs it reused and the pairs the teacher
scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cache.format import load_cache  # noqa: E402
from distill.cache.twins import twin_share  # noqa: E402
from distill.data.shapes import generate_corpus  # noqa: E402

CORPUS_ARGS = ("seed", "num_train", "num_val", "num_test", "num_objects", "captions_per_image", "twin_prob",
               "image_size", "layout", "twins_per_scene")


def table(folders: list[str], ks: list[int]) -> str:
    """A markdown table: one row per cache and k."""
    lines = ["| cache | mined by | k | image -> caption: anchors with twin (of those with one in the split) | "
             "twins / anchor | caption -> image: anchors with twin (of those with one) | twins / anchor | pairs reused | "
             "pairs scored |", "|" + "---|" * 9]
    for folder in folders:
        cache = load_cache(folder)
        args = cache.manifest["data"]["init_args"]
        corpus = generate_corpus(**{key: args[key] for key in CORPUS_ARGS if key in args})
        student = cache.manifest["student"]
        mined_by = student.get("checkpoint") or student["weights_sha256"][:12]
        reused, scored = cache.manifest.get("pairs_reused", "-"), cache.manifest.get("pairs_scored", "-")
        for k in ks:
            shares = twin_share(cache, corpus, min(k, cache.k))
            cells = [f"{100 * s.share:.1f}% ({100 * s.with_twin / max(s.possible, 1):.1f}%) | "
                     f"{s.twins / max(s.anchors, 1):.3f}" for s in shares.values()]
            lines.append(f"| {Path(folder).name} | {mined_by} | {min(k, cache.k)} | {' | '.join(cells)} | {reused} | "
                         f"{scored} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("caches", nargs="+", help="teacher cache folders of a shapes data set")
    parser.add_argument("--k", type=int, action="append", help="first k candidates (repeatable; default 2 and K)")
    args = parser.parse_args()
    print(table(args.caches, args.k or [2, 10**9]))


if __name__ == "__main__":
    main()

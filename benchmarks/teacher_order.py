"""How much ranking signal does the teacher give about a student's hard negatives? (shapes test split)

    python benchmarks/teacher_order.py --student-ckpt runs/quality/pretrain-infonce-seed0-steps300.ckpt
    python benchmarks/teacher_order.py --suite grid --student-ckpt runs/quality-grid/pretrain-infonce-seed0-steps300.ckpt

For each of ``--anchors`` test anchors per direction, the student's top-``--k`` negatives (other
captions of the anchor's image excluded) are scored by the teacher (its pair score, ITM + ITC, and its
ITC cosine alone) and compared with a ground truth the generator knows: the number of attributes
(size, colour, shape) that the candidate's scene shares with the anchor's, object by object (row split: the
same position from the left; grid split: the same cell).
Reported: mean Spearman correlation per anchor of each score with that overlap and with each other,
the share of the negatives that are binding twins of the anchor, and the Plackett-Luce (CPRD) loss of
the student's scores under the teacher's order next to its value for a random order. This is the
signal CPRD distils; see the notes of the loss comparison in docs/benchmarks.md.

On the grid split it also measures binding directly: for the first ``--anchors`` test images, the first
caption against the same caption with one binding swap of each kind (two cells exchange their colours, sizes,
shapes or whole objects; the words stay). Reported per kind: the share of images for which each score ranks the
true caption first (50% is chance): the full teacher (ITM + ITC), its fusion head alone (ITM), its dual-encoder
half (ITC cosine) and the student.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.recipe import DistillCLI  # noqa: E402
from distill.data.shapes import layout_are_twins, signature_overlap  # noqa: E402
from distill.evaluation.diagnostics import spearman_per_row  # noqa: E402
from distill.inputs import concat_inputs  # noqa: E402
from distill.losses.cprd import cprd_loss  # noqa: E402
from distill.cli.report import update_markdown_section  # noqa: E402
from distill.students.weights import load_student_weights  # noqa: E402


SUITES = {"grid": ("grid-cprd.yaml", "artifacts/shapes-grid-teacher"),
          "row": ("shapes-cprd.yaml", "artifacts/shapes-teacher")}


@torch.no_grad()
def encode_split(model, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, dict]:
    a, b, ids, a_inputs, b_inputs = [], [], [], [], []
    for batch in loader:
        a.append(model.student.encode_a(batch["a"]))
        b.append(model.student.encode_b(batch["b"]))
        ids.append(batch["a_id"])
        a_inputs.append(batch["a"])
        b_inputs.append(batch["b"])
    return torch.cat(a), torch.cat(b), torch.cat(ids), concat_inputs(a_inputs), concat_inputs(b_inputs)


@torch.no_grad()
def direction_stats(model, similarity: torch.Tensor, image_ids: torch.Tensor, rows: torch.Tensor, k: int,
                    signatures: dict, a_inputs: dict, b_inputs: dict, image_anchor: bool, layout: str = "row"
                    ) -> dict[str, float]:
    """Rows of ``similarity`` are pairs (image i, caption i); anchors are ``rows``; columns the other side."""
    teacher = model.teacher
    same_image = image_ids[rows].unsqueeze(1) == image_ids.unsqueeze(0)
    scores = similarity[rows] if image_anchor else similarity.T[rows]
    if not image_anchor:  # a caption's candidates are images: keep one column (pair) per image
        first_pair: dict[int, int] = {}
        for pair, image in enumerate(image_ids.tolist()):
            first_pair.setdefault(image, pair)
        first = torch.zeros(len(image_ids), dtype=torch.bool)
        first[list(first_pair.values())] = True
        same_image = same_image | ~first.unsqueeze(0)
    negatives = scores.masked_fill(same_image, float("-inf")).topk(k, dim=1).indices  # [A, k]
    student = scores.gather(1, negatives)
    anchor_index = rows.repeat_interleave(k)
    a_index, b_index = (anchor_index, negatives.reshape(-1)) if image_anchor else (negatives.reshape(-1), anchor_index)
    pair_scores = teacher.score_pairs(a_inputs, b_inputs, a_index, b_index).float().view(-1, k)
    itc = (teacher.embed_a({key: v[a_index] for key, v in a_inputs.items()})
           * teacher.embed_b({key: v[b_index] for key, v in b_inputs.items()})).sum(-1).view(-1, k)
    anchor_sigs = [signatures[int(i)] for i in image_ids[rows]]
    overlap = torch.tensor([[signature_overlap(sig, signatures[int(image_ids[c])]) for c in row]
                            for sig, row in zip(anchor_sigs, negatives.tolist())], dtype=torch.float32)
    twins = torch.tensor([[layout_are_twins(sig, signatures[int(image_ids[c])], layout) for c in row]
                          for sig, row in zip(anchor_sigs, negatives.tolist())], dtype=torch.float32)
    valid = torch.ones_like(student, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    shuffled = [cprd_loss(student, pair_scores.gather(1, torch.argsort(torch.rand(student.shape, generator=generator))),
                          valid, 0.05) for _ in range(20)]
    return {
        "teacher vs overlap": float(spearman_per_row(pair_scores, overlap).mean()),
        "teacher ITC vs overlap": float(spearman_per_row(itc, overlap).mean()),
        "student vs overlap": float(spearman_per_row(student, overlap).mean()),
        "teacher vs student": float(spearman_per_row(pair_scores, student).mean()),
        "twin share": float(twins.mean()),
        "CPRD loss (T=0.05)": float(cprd_loss(student, pair_scores, valid, 0.05)),
        "CPRD loss, random order": float(torch.stack(shuffled).mean()),
    }


@torch.no_grad()
def binding_accuracy(model, data, anchors: int) -> dict[str, dict[str, float]]:
    """``{swap kind: {score: % of test images whose true caption outscores its swap}}`` (grid split)."""
    from distill.data.batch import normalize_pixels
    from distill.data.shapes.grid import SWAP_FIELDS, swapped_caption

    teacher, student = model.teacher, model.student  # without a teacher: the student's column alone
    rng = np.random.default_rng(0)
    items = data.corpus.test[:anchors]
    images = normalize_pixels(data.images["test"][: len(items)])
    results: dict[str, dict[str, float]] = {}
    for kind in SWAP_FIELDS:
        kept = [(row, item.captions[0], swap) for row, item in enumerate(items)
                if (swap := swapped_caption(item.captions[0], kind, rng)) is not None]
        a = {"pixel_values": images[torch.tensor([row for row, _, _ in kept])]}
        student_images = student.encode_a(a)
        image_tokens = teacher.encode_image_tokens(a["pixel_values"]) if teacher is not None else None
        scores = []
        for captions in ([true for _, true, _ in kept], [swap for _, _, swap in kept]):
            encoded = data.tokenizer(captions, padding=True, return_tensors="pt")
            b = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
            captions_b = student.encode_b(b)
            paired = getattr(student, "score_pairs", None)  # a late-interaction student scores its token sets
            row = {"student": paired(student_images, captions_b) if paired else (student_images * captions_b).sum(-1)}
            if teacher is not None:
                text_tokens = teacher.encode_text_tokens(b["input_ids"], b["attention_mask"])
                itm = teacher.itm_logit(image_tokens, text_tokens, b["attention_mask"])
                itc = teacher.itc_logit(image_tokens, text_tokens)
                row = {"teacher (ITM + ITC)": itm + itc, "fusion head alone (ITM)": itm, "teacher ITC": itc, **row}
            scores.append(row)
        results[kind] = {name: 100.0 * float((scores[0][name] > scores[1][name]).float().mean())
                         for name in scores[0]}
        results[kind]["images"] = float(len(kept))
    return results


def twin_share_of_misses(similarity: torch.Tensor, image_ids: torch.Tensor, signatures: dict, layout: str
                         ) -> tuple[int, int, int]:
    """Image -> caption top-1 of the student over the split: ``(images, misses, misses on a binding twin)``.

    ``similarity[i, j]`` scores the image of pair ``i`` against the caption of pair ``j``.
    """
    first_pair: dict[int, int] = {}
    for pair, image in enumerate(image_ids.tolist()):
        first_pair.setdefault(image, pair)
    rows = torch.tensor(list(first_pair.values()))
    top = similarity[rows].argmax(dim=1)
    anchors, retrieved = image_ids[rows].tolist(), image_ids[top].tolist()
    misses = [(a, r) for a, r in zip(anchors, retrieved) if a != r]
    twins = sum(layout_are_twins(signatures[a], signatures[r], layout) for a, r in misses)
    return len(anchors), len(misses), twins


def binding_table(results: dict[str, dict[str, float]]) -> str:
    keys = [key for key in next(iter(results.values())) if key != "images"]
    lines = ["| swap | images | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    lines += [f"| {kind} | {int(values['images'])} | " + " | ".join(f"{values[key]:.1f}" for key in keys) + " |"
              for kind, values in results.items()]
    return "\n".join(lines)


def main() -> None:
    from distill.cli.quiet import configure_output

    configure_output()  # distill's own lines, not Lightning's tips and banners
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="row", choices=sorted(SUITES), help="the row split (default) or the grid split")
    parser.add_argument("--teacher-dir", default=None, help="default: the suite's teacher weights")
    parser.add_argument("--student-ckpt", required=True, help="a DistillationModule checkpoint of the demo student")
    parser.add_argument("--anchors", type=int, default=200, help="test anchors per direction")
    parser.add_argument("--k", type=int, default=8, help="student-mined negatives per anchor")
    parser.add_argument("--binding-images", type=int, default=500, help="grid split: test images for the binding table")
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe, teacher_dir = SUITES[args.suite]
    cli = DistillCLI(args=["--config", str(REPO / "configs" / "demo" / recipe),
                           f"--model.init_args.teacher.init_args.weights={args.teacher_dir or REPO / teacher_dir}"],
                     run=False)
    model, data = cli.model, cli.datamodule
    load_student_weights(model.student, args.student_ckpt, option="--student-ckpt")
    model.eval()
    data.setup("test")
    signatures = {item.image_id: item.signature for item in data.corpus.test}
    emb_a, emb_b, image_ids, a_inputs, b_inputs = encode_split(model, data.test_dataloader())
    similarity = emb_a @ emb_b.T  # [pairs, pairs]: row i is image of pair i, column j caption j
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(image_ids), generator=generator)[: args.anchors]
    results = {
        "image -> caption": direction_stats(model, similarity, image_ids, rows, args.k, signatures, a_inputs,
                                            b_inputs, image_anchor=True, layout=data.corpus.layout),
        "caption -> image": direction_stats(model, similarity, image_ids, rows, args.k, signatures, a_inputs,
                                            b_inputs, image_anchor=False, layout=data.corpus.layout),
    }
    keys = list(next(iter(results.values())))
    lines = ["| direction | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{values[key]:.3f}" for key in keys) + " |" for name, values in results.items()]
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/teacher_order.py " + " ".join(sys.argv[1:])
    section = (f"## What the teacher says about a student's hard negatives ({args.suite} split)\n\nCommand: `{command}`\n\n{table}\n\n"
               f"- {args.anchors} test anchors per direction, the student's top-{args.k} negatives each (other "
               "captions of the anchor's image excluded; one column per image for caption anchors). Overlap: "
               "attributes (size, colour, shape) the candidate's scene shares with the anchor's, object by "
               "object (row: position from the left; grid: cell). Spearman correlations are per anchor, then averaged. Twin share: negatives that are "
               "a single binding swap of the anchor's scene. The CPRD loss is the Plackett-Luce loss of the "
               "student's scores in the teacher's order (`cprd_loss`, all K valid); the last column "
               "is its mean over 20 random orders of the same teacher scores.")
    if args.suite == "grid":
        binding = binding_table(binding_accuracy(model, data, args.binding_images))
        images, misses, twins = twin_share_of_misses(similarity, image_ids, signatures, data.corpus.layout)
        binding += (f"\n\nThe student's image -> caption top-1 over the test split misses {misses} of {images} images; "
                    f"{twins} of those misses ({100 * twins / max(misses, 1):.0f}%) rank a caption of the image's binding twin first.")
        print(binding)
        section += (f"\n\nBinding, measured directly: for each of the first {args.binding_images} test images, its first "
                    "caption against the same caption with one binding swap of the kind named (two cells exchange "
                    "their colours, sizes, shapes or whole objects; images where no two objects differ in that kind "
                    "are left out). Share (%) of images for which each score ranks the true caption first; 50 is "
                    f"chance.\n\n{binding}")
    update_markdown_section(args.markdown, "teacher-order" if args.suite == "row" else f"teacher-order-{args.suite}",
                            section)
    print(f"[teacher_order] wrote {args.markdown}")


if __name__ == "__main__":
    main()

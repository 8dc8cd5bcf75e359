"""Why training on grouped cached batches collapses (shapes grid split): the embeddings, step by step.

    python benchmarks/cache_collapse.py                  # 4 variants x 40 steps, ~5 minutes on 2 CPU cores
    python benchmarks/cache_collapse.py --steps 10       # a quick look

Needs the grid loss study's starting student and cache (see configs/demo/grid-cached-cprd.yaml's header):
``runs/quality-grid/pretrain-infonce-seed0-steps300.ckpt`` and ``caches/grid-cprd-k8``.

Each variant starts from that student and takes ``--steps`` AdamW steps of InfoNCE alone (no distillation
loss: the collapse needs none) on the cached train loader, 1 thread:

* ``grouped, lr 1e-3``: ``CachedCandidatesDataModule(batching: grouped)``, the recipe's learning rate;
* ``grouped, BatchNorm frozen``: the same, with the image tower's BatchNorm layers kept in eval mode (their
  running statistics) while the rest trains;
* ``grouped, lr 1e-4``: a tenth of the learning rate;
* ``random, lr 1e-3``: ``batching: random`` (the default), the data's own random batches.

Every ``--every`` steps it reports, on one fixed *random* batch of the plain train loader (eval mode): the mean
cosine of matching pairs, of non-matching pairs and between different images; on the step's own training batch:
matching and non-matching cosine in train mode (BatchNorm on the batch's statistics) and in eval mode; the
InfoNCE loss of the step and the student's temperature. The table goes to stdout and, with the command, to
``--markdown`` (section ``cache-collapse``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.recipe import DistillCLI  # noqa: E402
from distill.cli.report import update_markdown_section  # noqa: E402

VARIANTS = {  # name: (batching, learning rate, BatchNorm frozen)
    "grouped, lr 1e-3": ("grouped", 1e-3, False),
    "grouped, BatchNorm frozen": ("grouped", 1e-3, True),
    "grouped, lr 1e-4": ("grouped", 1e-4, False),
    "random, lr 1e-3": ("random", 1e-3, False),
}
COLUMNS = ("variant", "step", "random batch: matching", "non-matching", "image-image", "training batch (train mode): "
           "matching", "non-matching", "(eval mode): matching", "non-matching", "InfoNCE", "temperature")


def build(batching: str, args: argparse.Namespace) -> DistillCLI:
    return DistillCLI(args=[
        "--config", str(REPO / "configs" / "demo" / "grid-cached-cprd.yaml"),
        f"--model.init_args.student_init={args.student}", "--model.init_args.teacher=null",
        f"--data.init_args.batching={batching}", f"--data.init_args.cache_dir={args.cache}",
        '--model.init_args.losses={"infonce": {"class_path": "distill.losses.InfoNCE"}}',
        '--model.init_args.loss_weights={"infonce": 1.0}'], run=False)


def train_mode(model: Any, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def cosines(model: Any, batch: dict[str, Any]) -> tuple[float, float, float]:
    """Mean cosine of matching pairs, of non-matching pairs, and between different images of ``batch`` (the
    model's buffers, BatchNorm's running statistics among them, are left as they were)."""
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    images, captions = model.student.encode_a(batch["a"]), model.student.encode_b(batch["b"])
    for name, value in model.named_buffers():
        value.copy_(buffers[name])
    scores, others = images @ captions.T, ~torch.eye(images.shape[0], dtype=torch.bool)
    return float(scores.diag().mean()), float(scores[others].mean()), float((images @ images.T)[others].mean())


def run_variant(name: str, args: argparse.Namespace) -> list[list[str]]:
    batching, lr, freeze_bn = VARIANTS[name]
    torch.manual_seed(0)
    cli = build(batching, args)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    probe = next(iter(data.data.train_dataloader()))
    batches = iter(data.train_dataloader())
    optimizer = torch.optim.AdamW(model.student.parameters(), lr=lr, weight_decay=0.01)
    rows = []
    for step in range(args.steps + 1):
        batch = next(batches)
        report = step % args.every == 0
        if report:
            model.eval()
            probe_cos = cosines(model, probe)
            eval_cos = cosines(model, batch)
            train_mode(model, freeze_bn)
            train_cos = cosines(model, batch)
        train_mode(model, freeze_bn)
        optimizer.zero_grad(set_to_none=True)
        inputs, _ = model.build_loss_inputs(batch)
        loss = model.losses["infonce"](inputs)
        if report:
            rows.append([name, str(step), *(f"{v:.3f}" for v in probe_cos), *(f"{v:.3f}" for v in train_cos[:2]),
                         *(f"{v:.3f}" for v in eval_cos[:2]), f"{float(loss):.3f}",
                         f"{1 / float(model.student.logit_scale.detach()):.4f}"])
            print(" | ".join(rows[-1]), flush=True)
        if step < args.steps:
            loss.backward()
            optimizer.step()
    return rows


def main() -> None:
    from distill.cli.quiet import configure_output

    configure_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=str(REPO / "runs/quality-grid/pretrain-infonce-seed0-steps300.ckpt"))
    parser.add_argument("--cache", default=str(REPO / "caches/grid-cprd-k8"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for name in args.variants for row in run_variant(name, args)]
    command = "python benchmarks/cache_collapse.py " + " ".join(sys.argv[1:])
    table = "\n".join(["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|",
                       *("| " + " | ".join(row) + " |" for row in rows)])
    section = ("## Why grouped cached batches collapse (grid split)\n\n"
               f"Command: `{command.strip()}`\n\n{table}\n\n"
               f"InfoNCE alone, B = 64 (ln 64 = {math.log(64):.3f}), from the grid study's starting student; cosines "
               "are means over the pairs named; the random batch is one fixed batch of the plain train loader, in eval "
               "mode. See the notes below the table.\n")
    update_markdown_section(args.markdown, "cache-collapse", section)
    print(f"[cache_collapse] wrote {args.markdown}")


if __name__ == "__main__":
    main()

"""A fusion teacher for the real-text study: the InfoNCE student as its ITC half, plus query -> passage cross-attention.

    OMP_NUM_THREADS=2 python benchmarks/real_text_fusion.py --data runs/code-search --study runs/real-text-t600 \
        --queries 3200 --epochs 4 --layers 2 --lr 1e-4          # ~4 min per epoch on 2 cores

The question: can a teacher that starts *equal* to the InfoNCE student gain on it through cross-attention, where a
cross-encoder fine-tuned from all-MiniLM-L6-v2 (benchmarks/real_text_teacher.py) stays below it? The model follows
ALBEF / BLIP's ITM: score(q, p) = s * cos(mean(q), mean(p)) + w . LN(mean over q of Fusion(q tokens, p tokens)),
where the token states come from the study's InfoNCE student (seed 0, frozen; its mean-pooled cosine is that
student's own score, s starts at its 1/temperature 20), Fusion is ``--layers`` ``nn.TransformerDecoderLayer``s (the
query tokens attend to themselves and to the passage tokens; d 384, 6 heads, FFN 1536, dropout 0.1, pre-norm) and
the head w starts at zero, so the untrained teacher ranks exactly as the student.

Training: ``--queries`` training queries of the BEIR folder's train split that the study's training view does not
hold (seeded sample), each with its first judged passage and 7 negatives, the student's top 7 among the sampled
queries' judged passages (its own left out); the cross-entropy of the positive among the 8, batches of 32 queries,
AdamW (weight decay 0.01) with a one-cycle schedule, the towers frozen (their token states computed once: queries
at 32 tokens, passages at 64). After every epoch the teacher re-ranks the student's top 20 (``<study>``'s
``student-candidates.json``, written by real_text_teacher.py) for the study's 400 test queries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_text as rt  # noqa: E402
import real_text_teacher as tt  # noqa: E402


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit mean-pooled rows ``[N, D]`` of token states ``[N, L, D]`` under ``mask [N, L]``."""
    m = mask.unsqueeze(-1).float()
    return F.normalize((hidden.float() * m).sum(1) / m.sum(1), dim=-1)


class Fusion(nn.Module):
    """score = s * cos(mean q, mean p) + head(LN(mean over q of the decoder's output)); head starts at zero."""

    def __init__(self, width: int = 384, layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerDecoderLayer(width, 6, 4 * width, dropout=0.1, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.log_scale = nn.Parameter(torch.tensor(20.0).log())

    def forward(self, qh: torch.Tensor, qm: torch.Tensor, ph: torch.Tensor,
                pm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[N]`` and their ITC part ``[N]`` of N aligned (query, passage) token-state pairs."""
        itc = (pooled(qh, qm) * pooled(ph, pm)).sum(-1) * self.log_scale.exp()
        x = self.decoder(qh.float(), ph.float(), tgt_key_padding_mask=~qm, memory_key_padding_mask=~pm)
        m = qm.unsqueeze(-1).float()
        fused = self.norm((x * m).sum(1) / m.sum(1))
        return itc + self.head(fused).squeeze(-1), itc


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModel, AutoTokenizer

    from distill.students import minilm_path
    from distill.students.weights import read_student_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="the BEIR folder (benchmarks/code_corpus.py)")
    parser.add_argument("--study", required=True, type=Path, help="a real_text.py --out folder with infonce-seed0")
    parser.add_argument("--queries", type=int, default=3200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=None, help="write the per-epoch results here (JSON)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    negatives, batch = 7, 32
    student = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(student)
    enc = AutoModel.from_pretrained(student).eval()
    trained, _ = read_student_checkpoint(rt.newest_checkpoint(args.study / "runs" / "infonce-seed0"), "checkpoint")
    prefix = "tower_a.encoder."
    enc.load_state_dict({k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}, strict=False)

    @torch.inference_mode()
    def states(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
            out.append((enc(**b).last_hidden_state.half(), b["attention_mask"].bool()))
        return torch.cat([h for h, _ in out]), torch.cat([m for _, m in out])

    t0 = time.time()
    seen = {str(r["_id"]) for r in rt.read_jsonl(args.study / "data" / "train" / "queries.jsonl")}
    queries, passages, judged = tt.sample_queries(args.data, args.queries + 1400, seed=1)
    qids = [q for q in queries if q not in seen][: args.queries]
    pids = list(passages)
    qh, qm = states([queries[q] for q in qids], 32)
    ph, pm = states([passages[p] for p in pids], 64)
    index = {p: i for i, p in enumerate(pids)}
    sims = pooled(qh, qm) @ pooled(ph, pm).T
    lists = []
    for i, q in enumerate(qids):
        sims[i, [index[p] for p in judged[q] if p in index]] = -9
        lists.append([index[judged[q][0]]] + sims[i].topk(negatives).indices.tolist())
    lists = torch.tensor(lists)
    print(f"[fusion] {len(qids)} queries, pool {len(pids)} passages, encoded and mined in {time.time() - t0:.0f} s",
          flush=True)

    test = args.study / "data" / "test"
    tq, tp = tt.read_texts(test / "queries.jsonl"), tt.read_texts(test / "corpus.jsonl")
    qrels = rt.read_qrels(test / "qrels" / "test.tsv")
    cands = json.loads((args.study / "student-candidates.json").read_text(encoding="utf-8"))["infonce"]
    tqids = sorted(tq)
    need = sorted({p for q in tqids for p in cands[q][:20]})
    tqh, tqm = states([tq[q] for q in tqids], 32)
    tph, tpm = states([tp[p] for p in need], 64)
    tindex = {p: i for i, p in enumerate(need)}

    @torch.no_grad()
    def evaluate(model: Fusion) -> dict[str, dict[str, float]]:
        model.eval()
        runs, itc_runs = {}, {}
        for i, q in enumerate(tqids):
            c = cands[q][:20]
            rows = torch.tensor([tindex[p] for p in c])
            s, itc = model(tqh[i:i + 1].expand(len(c), -1, -1), tqm[i:i + 1].expand(len(c), -1), tph[rows], tpm[rows])
            runs[q] = rt.ordered({p: float(v) for p, v in zip(c, s)}) + cands[q][20:]
            itc_runs[q] = rt.ordered({p: float(v) for p, v in zip(c, itc)}) + cands[q][20:]
        sub = {q: qrels[q] for q in tqids}
        model.train()
        return {"reranked": rt.ranked_metrics(runs, sub), "itc": rt.ranked_metrics(itc_runs, sub),
                "student": rt.ranked_metrics({q: cands[q] for q in tqids}, sub)}

    model = Fusion(layers=args.layers)
    history = [{"epoch": -1, **evaluate(model)}]
    print(f"[fusion] untrained: re-ranked MRR@10 {history[0]['reranked']['mrr@10']:.4f} "
          f"(student {history[0]['student']['mrr@10']:.4f})", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    per_epoch = len(qids) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * per_epoch, pct_start=0.1)
    for epoch in range(args.epochs):
        perm, total = torch.randperm(len(qids)), 0.0
        for s in range(per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            rows = lists[idx]
            n = rows.shape[1]
            scores, _ = model(qh[idx].repeat_interleave(n, 0), qm[idx].repeat_interleave(n, 0), ph[rows.flatten()],
                              pm[rows.flatten()])
            loss = F.cross_entropy(scores.view(batch, n), torch.zeros(batch, dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        result = {"epoch": epoch, "loss": total / per_epoch, "seconds": time.time() - t0, **evaluate(model)}
        history.append(result)
        print(f"[fusion] epoch {epoch}: loss {result['loss']:.4f} (chance {torch.tensor(8.0).log():.4f}), re-ranked "
              f"MRR@10 {result['reranked']['mrr@10']:.4f} nDCG@10 {result['reranked']['ndcg@10']:.4f} (student "
              f"{result['student']['mrr@10']:.4f} / {result['student']['ndcg@10']:.4f}), {result['seconds']:.0f} s",
              flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

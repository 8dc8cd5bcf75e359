"""Training recipe for the demo cross-encoder teacher (ALBEF-style ITC + ITM on hard negatives).

Loss per batch = ``itc_weight * ITC + itm_weight * ITM (+ mlm_weight * MLM)`` where
* ITC is the symmetric multi-positive InfoNCE over the unimodal embeddings;
* ITM trains the fusion head on every positive pair, one hard negative caption per image and one
  hard negative image per caption, each sampled in proportion to ``softmax(ITC similarity)``
  over the anchor's negatives (as in ALBEF), and, when the data provides them, binding negatives
  (a caption with the same words in another arrangement). ``itm_loss="bce"`` is ALBEF's binary
  matching loss; ``itm_loss="grouped"`` (default) is a listwise cross-entropy per anchor over its
  positive and its negatives (localised contrastive estimation, Gao et al., ECIR 2021), which
  ranks directly and cannot collapse to "always no match" the way class-imbalanced BCE can;
* MLM (``mlm_weight > 0``, ALBEF's third loss) predicts masked caption words from the fusion's output
  over the masked caption and its image (see :meth:`CrossEncoderPretraining.mlm_loss_of`).
With ``itc_steps`` the two halves train on their own clocks, so the ITC half can be trained exactly as
long as a student: the optimizer gets two parameter groups (ITC: towers, projections, temperature, at
``itc_lr``; fusion: the rest), a :class:`GroupedWarmupCosineLR` decays the ITC group to 0 at step
``itc_steps`` and the fusion group at the run's end, and from step ``itc_steps`` on the ITC half is
frozen (no gradients, eval mode) while the fusion head keeps training on its features. With
``itm_into_towers=False`` the ITM loss never reaches the towers (the fusion reads detached token
features), so the ITC half is trained by the ITC loss alone, like an InfoNCE student.
Validation and test rank by ITC top-``rerank_k`` re-ranked by the teacher's score, through the same
:class:`~distill.evaluation.RecallEvaluator` as distillation runs (the teacher's ITC towers play the
first stage). At the end of ``fit`` the teacher is written with ``save_pretrained`` to ``output_dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from distill.data.items import item_store
from distill.data.shapes.tokenizer import MASK_TOKEN, SPECIAL_TOKENS
from distill.evaluation import DEFAULT_KS, EvalContext, RecallEvaluator, Results
from distill.losses import symmetric_infonce_loss
from distill.teachers.scoring import TeacherScorer
from distill.teachers.shapes import ShapesCrossEncoder
from distill.training.optim import optimizer_config, resolve_run_length
from distill.training.schedules import WarmupCosineLR


def default_teacher_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)


@torch.no_grad()
def sample_negatives(similarity: Tensor, positive_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One negative column per row, drawn with probability ``softmax(similarity)`` over non-positives.

    ``[N, M], [N, M] -> [N]``. Rows without a negative fall back to their highest-scoring column.
    """
    logits = similarity.float().masked_fill(positive_mask, float("-inf"))
    has_negative = torch.isfinite(logits).any(1, keepdim=True)
    logits = torch.where(has_negative, logits, similarity.float())
    probs = logits.softmax(dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def grouped_itm_loss(logits: Tensor, size: int) -> Tensor:
    """Listwise ITM loss over logits laid out as ``[pos | neg_text | neg_image | (binding)]``, each ``size`` long.

    Per image: cross-entropy of ``[pos, neg_text, (binding)]`` with target 0; per caption:
    cross-entropy of ``[pos, neg_image]`` with target 0; the two averages are summed.
    """
    blocks = logits.view(-1, size)
    image_group = torch.stack([blocks[0], blocks[1], *blocks[3:]], dim=1)
    text_group = torch.stack([blocks[0], blocks[2]], dim=1)
    target = torch.zeros(size, dtype=torch.long, device=logits.device)
    return F.cross_entropy(image_group, target) + F.cross_entropy(text_group, target)


class GroupedWarmupCosineLR(WarmupCosineLR):
    """:class:`WarmupCosineLR` in which parameter group ``i`` may end early, at ``group_total_steps[i]``.

    ``lr_i(t) = base_lr_i * f(t; W, T_i)`` with ``T_i = group_total_steps[i]`` (``None`` or missing: the
    run's ``total_steps``); after ``T_i`` the group's rate stays at ``min_lr_ratio * base_lr_i``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
                 min_lr_ratio: float = 0.0, group_total_steps: list[int | None] | None = None,
                 last_epoch: int = -1) -> None:
        self.group_total_steps = list(group_total_steps or [])
        super().__init__(optimizer, warmup_steps, total_steps, min_lr_ratio, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        rates = []
        for index, base_lr in enumerate(self.base_lrs):
            own = self.group_total_steps[index] if index < len(self.group_total_steps) else None
            run_total = self.total_steps
            self.total_steps = own if own is not None else run_total
            rates.append(base_lr * self.factor(self.last_epoch))
            self.total_steps = run_total
        return rates


class CrossEncoderPretraining(L.LightningModule):
    """Trains a :class:`ShapesCrossEncoder` from scratch and saves it for distillation."""

    def __init__(
        self,
        teacher: ShapesCrossEncoder,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        rerank_k: int = 16,
        itm_loss: str = "grouped",
        output_dir: str | None = None,
        optimizer: OptimizerCallable = default_teacher_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        eval_ks: tuple[int, ...] = DEFAULT_KS,
        itc_steps: int | None = None,
        itc_lr: float | None = None,
        itm_into_towers: bool = True,
        mlm_weight: float = 0.0,
        mlm_probability: float = 0.25,
        teacher_max_pairs: int | None = 4096,
    ) -> None:
        super().__init__()
        if itc_steps is not None and itc_steps < 1:
            raise ValueError(f"model.itc_steps must be >= 1 or null, got {itc_steps}")
        for name, value in (("itc_weight", itc_weight), ("itm_weight", itm_weight)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        if itm_loss not in ("grouped", "bce"):
            raise ValueError(f"model.itm_loss must be 'grouped' or 'bce', got {itm_loss!r}")
        self.itm_loss = itm_loss
        if rerank_k < 1:
            raise ValueError(f"model.rerank_k must be >= 1, got {rerank_k}")
        self.teacher = teacher
        self.scorer = TeacherScorer(teacher, max_pairs=teacher_max_pairs)  # evaluation's re-ranking forwards
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.rerank_k = rerank_k
        self.output_dir = output_dir
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.evaluator = RecallEvaluator(ks=eval_ks, two_stage_k=rerank_k, two_stage_at=("val", "test"),
                                         diagnostics=False)
        self.test_results: Results = {}
        self.itc_steps, self.itc_lr, self.itm_into_towers = itc_steps, itc_lr, itm_into_towers
        if mlm_weight < 0 or not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"model.mlm_weight must be >= 0 and model.mlm_probability in (0, 1], got {mlm_weight}, "
                             f"{mlm_probability}")
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        self.mask_token_id = SPECIAL_TOKENS.index(MASK_TOKEN)
        # A training-only head (not part of the saved teacher): fused caption states -> word ids.
        self.mlm_head = torch.nn.Linear(teacher.config.width, teacher.config.vocab_size) if mlm_weight > 0 else None

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        teacher = self.teacher
        attention_mask = batch["b"]["attention_mask"]
        detach = not self.itm_into_towers
        image_tokens = teacher.encode_image_tokens(batch["a"]["pixel_values"], detach_towers=detach)
        text_tokens = teacher.encode_text_tokens(batch["b"]["input_ids"], attention_mask, detach_towers=detach)
        emb_a, emb_b = teacher.embed_image_tokens(image_tokens), teacher.embed_text_tokens(text_tokens)
        image_tokens, text_tokens = self.fusion_view(image_tokens), self.fusion_view(text_tokens)
        similarity = emb_a @ emb_b.T
        positives = batch["a_id"].unsqueeze(1) == batch["a_id"].unsqueeze(0)
        itc = symmetric_infonce_loss(similarity, positives, teacher.logit_scale)
        itm = self.itm_loss_of(batch, image_tokens, text_tokens, similarity.detach(), positives)
        total = self.itc_weight * itc + self.itm_weight * itm
        size = similarity.shape[0]
        if self.mlm_head is not None:
            mlm = self.mlm_loss_of(batch, image_tokens)
            total = total + self.mlm_weight * mlm
            self.log("train/loss/mlm", mlm, batch_size=size)
        self.log_dict({"train/loss/itc": itc, "train/loss/itm": itm}, batch_size=size)
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        return total

    def itm_loss_of(self, batch: Mapping[str, Any], image_tokens: Tensor, text_tokens: Tensor, similarity: Tensor,
                    positives: Tensor) -> Tensor:
        """ITM over ``[pos | ITC-sampled negative caption | ITC-sampled negative image | (binding caption)]``."""
        attention_mask = batch["b"]["attention_mask"]
        size = similarity.shape[0]
        rows = torch.arange(size, device=similarity.device)
        scale = self.teacher.logit_scale.detach()
        neg_text = sample_negatives(similarity * scale, positives)
        neg_image = sample_negatives(similarity.T * scale, positives.T)
        image_index = torch.cat([rows, rows, neg_image])
        text_index = torch.cat([rows, neg_text, rows])
        logits = self.pair_logits(image_tokens[image_index], text_tokens[text_index], attention_mask[text_index])
        labels = torch.cat([torch.ones(size), torch.zeros(2 * size)]).to(logits)
        if "b_neg" in batch:
            neg_ids, neg_mask = batch["b_neg"]["input_ids"], batch["b_neg"]["attention_mask"]
            binding_tokens = self.fusion_view(self.teacher.encode_text_tokens(neg_ids, neg_mask,
                                                                              detach_towers=not self.itm_into_towers))
            binding = self.pair_logits(image_tokens, binding_tokens, neg_mask)
            logits = torch.cat([logits, binding])
            labels = torch.cat([labels, torch.zeros(size).to(labels)])
            self.log("train/itm_binding_accuracy", (logits[:size] > binding).float().mean().detach(), batch_size=size)
        if self.itm_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, labels)
        return grouped_itm_loss(logits, size)

    def mlm_loss_of(self, batch: Mapping[str, Any], image_tokens: Tensor) -> Tensor:
        """Image-conditioned masked language modelling (ALBEF's MLM) on the positive pairs.

        Each caption word (not ``[CLS]``/``[SEP]``/padding) is replaced by ``[MASK]`` with probability
        ``mlm_probability`` (at least one per caption); the fusion reads the masked caption with its image and
        ``mlm_head`` predicts the words: cross-entropy over the masked positions. Predicting a masked colour
        from "small [MASK] circle at top left" needs that cell of the image, so this teaches the fusion binding.
        """
        input_ids, attention_mask = batch["b"]["input_ids"], batch["b"]["attention_mask"]
        maskable = attention_mask.bool() & (input_ids >= len(SPECIAL_TOKENS))
        draw = torch.rand(input_ids.shape, device=input_ids.device).masked_fill(~maskable, 2.0)
        chosen = maskable & (draw < self.mlm_probability)
        chosen = chosen | (maskable & (draw == draw.min(dim=1, keepdim=True).values))  # one word at least
        masked_ids = input_ids.masked_fill(chosen, self.mask_token_id)
        text_tokens = self.fusion_view(self.teacher.encode_text_tokens(masked_ids, attention_mask,
                                                                       detach_towers=not self.itm_into_towers))
        fused = self.teacher.fused_text(image_tokens, text_tokens, attention_mask)
        assert self.mlm_head is not None
        return F.cross_entropy(self.mlm_head(fused[chosen]), input_ids[chosen])

    def fusion_view(self, tokens: Tensor) -> Tensor:
        """Tokens as the fusion losses see them: with ``itm_into_towers=False`` position 0 (the ITC input) is
        detached; the other positions were built with ``detach_towers``, so only the fusion's own layers learn."""
        return tokens if self.itm_into_towers else torch.cat([tokens[:, :1].detach(), tokens[:, 1:]], dim=1)

    def pair_logits(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """The teacher's pair scores ``[N]`` the ITM loss reads; with ``itm_into_towers=False`` the ITC term of
        ``score_mode="itm+itc"`` is detached too, so the ITM loss trains the fusion half only."""
        if self.itm_into_towers:
            return self.teacher.fuse(image_tokens, text_tokens, attention_mask)
        logits = self.teacher.itm_logit(image_tokens, text_tokens, attention_mask)
        if self.teacher.config.score_mode == "itm+itc":
            logits = logits + self.teacher.itc_logit(image_tokens, text_tokens).detach()
        return logits

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluator.update("student", batch, self.teacher.embed_a, self.teacher.embed_b)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluator.update("student", batch, self.teacher.embed_a, self.teacher.embed_b)

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def _eval_epoch_end(self, stage: str) -> None:
        """``teacher``: ITC top-``rerank_k`` re-ranked by the teacher's score; ``itc``: the ITC towers alone."""
        datamodule = getattr(self.trainer, "datamodule", None)
        context = EvalContext(stage=stage, scorer=self.scorer,
                              items=lambda: item_store(datamodule, stage), device=self.device)
        computed = self.evaluator.compute(context)
        if not computed:
            return
        results = {"teacher": computed["two_stage"], "itc": computed["student"]}
        for name, values in results.items():
            prefix = stage if name == "teacher" else f"{stage}/{name}"
            for key, value in values.items():
                self.log(f"{prefix}/{key}", value, prog_bar=key == "rsum" and name == "teacher", sync_dist=True)
        self.log(f"{stage}/score", results["teacher"]["rsum"], sync_dist=True)
        if stage == "test":
            self.test_results = results

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_train_end(self) -> None:
        if self.output_dir and self.trainer.is_global_zero:
            path = self.teacher.save_pretrained(Path(self.output_dir))
            print(f"saved teacher to {path}")

    def configure_optimizers(self) -> Any:
        """One parameter group, or with ``itc_steps`` two: ITC (group 0, ``itc_lr``) and fusion (group 1)."""
        head = list(self.mlm_head.parameters()) if self.mlm_head is not None else []
        if self.itc_steps is None:
            return optimizer_config(self.optimizer_factory, self.scheduler_factory, [*self.teacher.parameters(), *head])
        groups = self.teacher.parameter_groups()
        itc_group: dict[str, Any] = {"params": groups["itc"]}
        if self.itc_lr is not None:
            itc_group["lr"] = self.itc_lr
        config = optimizer_config(self.optimizer_factory, self.scheduler_factory,
                                  [itc_group, {"params": groups["fusion"] + head}])
        scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
        if not isinstance(scheduler, GroupedWarmupCosineLR):
            raise ValueError("model.itc_steps needs model.lr_scheduler "
                             "distill.training.teacher_pretraining.GroupedWarmupCosineLR (it ends the ITC group early)")
        scheduler.group_total_steps = [self.itc_steps, None]
        return config

    def on_train_start(self) -> None:
        resolve_run_length(self.trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """From step ``itc_steps`` on: the ITC half gets no gradients and stays in eval mode."""
        if self.itc_steps is None or self.global_step < self.itc_steps:
            return
        for parameter in self.teacher.parameter_groups()["itc"]:
            parameter.requires_grad_(False)
        for module in self.teacher.itc_modules():
            module.eval()  # again at every step: Lightning puts the model back in train mode after validation

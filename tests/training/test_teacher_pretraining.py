"""The demo teacher's training objective: ALBEF-style negative sampling and the grouped ITM loss."""

from __future__ import annotations

import math

import pytest
import torch

from distill.training.teacher_pretraining import CrossEncoderPretraining, grouped_itm_loss, sample_negatives


def test_sampled_negatives_are_never_positives() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    positives = ids.unsqueeze(1) == ids.unsqueeze(0)
    similarity = torch.randn(6, 6, generator=generator) + 5 * positives.float()  # positives score highest
    for _ in range(20):
        negatives = sample_negatives(similarity, positives, generator=generator)
        assert not positives[torch.arange(6), negatives].any()


def test_grouped_itm_loss_matches_hand_computation() -> None:
    # Layout [pos | neg_text | neg_image | binding], two anchors.
    logits = torch.tensor([2.0, 0.0, 1.0, -1.0, 0.5, 0.0, 0.0, 1.0])
    pos, neg_text, neg_image, binding = logits.view(4, 2)
    image_terms = [-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + math.exp(neg_text[i]) + math.exp(binding[i])))
                   for i in range(2)]
    text_terms = [-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + math.exp(neg_image[i]))) for i in range(2)]
    expected = sum(image_terms) / 2 + sum(text_terms) / 2
    assert float(grouped_itm_loss(logits, 2)) == pytest.approx(expected, rel=1e-6)


def test_training_step_runs_with_binding_negatives(tiny_teacher) -> None:
    from distill.data import ShapesDataModule
    from tests.helpers import TINY_DATA

    data = ShapesDataModule(**TINY_DATA, binding_negatives=True)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = CrossEncoderPretraining(teacher=tiny_teacher)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert tiny_teacher.itm_head.weight.grad is not None and tiny_teacher.itm_head.weight.grad.abs().sum() > 0


def test_rejects_bad_settings(tiny_teacher) -> None:
    with pytest.raises(ValueError, match="itm_loss"):
        CrossEncoderPretraining(teacher=tiny_teacher, itm_loss="hinge")
    with pytest.raises(ValueError, match="itm_weight"):
        CrossEncoderPretraining(teacher=tiny_teacher, itm_weight=-1.0)


def _matched_teacher(fusion_raw: bool = False):
    from distill.teachers import ShapesCrossEncoder

    torch.manual_seed(0)
    return ShapesCrossEncoder(towers="student", image_size=32, embed_dim=16, width=32, heads=2, text_layers=1,
                              image_channels=(8, 16, 16, 32), text_intermediate=64, fusion_layers=1, fusion_stage=3,
                              mlp_ratio=2, fusion_raw=fusion_raw)


def _batch():
    from distill.data import ShapesDataModule
    from tests.helpers import TINY_DATA

    data = ShapesDataModule(**TINY_DATA, binding_negatives=True)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


# Parameters that add one amount to every ITM logit (the head's bias, and the final norm's bias through the
# head's weights): each softmax group of the grouped loss is invariant to them, so their gradient is zero in exact
# arithmetic and float32 rounding (which depends on the CPU's vector unit) leaves ~1e-8 or exactly 0.
LOGIT_SHIFTS = ("itm_head.bias", "fusion_norm.bias")
ROUNDING = 1e-5  # above float32 rounding here (< 1e-7) and far below the smallest real fusion gradient (~1e-3)


@pytest.mark.parametrize("fusion_raw", [False, True])
def test_itm_loss_does_not_reach_the_towers_when_detached(fusion_raw: bool) -> None:
    teacher = _matched_teacher(fusion_raw)
    module = CrossEncoderPretraining(teacher=teacher, itc_weight=0.0, itm_into_towers=False)
    module.training_step(_batch(), 0).backward()
    groups = teacher.parameter_groups()
    # detached: the ITM loss is not in their graph; the ITC loss (weight 0) gives them exact zeros
    assert all(p.grad is None or not p.grad.any() for p in groups["itc"])
    names = {id(p): name for name, p in teacher.named_parameters()}
    gradients = {names[id(p)]: float(p.grad.abs().max()) for p in groups["fusion"] if p.grad is not None}
    assert len(gradients) == len(groups["fusion"])
    # every other layer of the fusion half learns, its input adapters included
    assert all(gradients.pop(name) < ROUNDING for name in LOGIT_SHIFTS)
    assert min(gradients.values()) > ROUNDING, gradients
    assert "fusion_patch_proj.weight" in gradients
    attached = _matched_teacher()
    CrossEncoderPretraining(teacher=attached, itc_weight=0.0).training_step(_batch(), 0).backward()
    assert any(p.grad is not None and p.grad.any() for p in attached.parameter_groups()["itc"])


def test_grouped_schedule_ends_the_itc_group_early() -> None:
    from distill.training.teacher_pretraining import GroupedWarmupCosineLR

    first, second = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [first], "lr": 1.0}, {"params": [second], "lr": 0.5}], lr=0.5)
    scheduler = GroupedWarmupCosineLR(optimizer, warmup_steps=2, total_steps=20, group_total_steps=[10, None])
    rates = []
    for _ in range(20):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx([1 / 3, 0.5 / 3])  # the same warm-up for both groups
    assert rates[6][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))  # cosine over 8 steps
    assert rates[10][0] == pytest.approx(0.0) and rates[19][0] == pytest.approx(0.0)
    assert rates[10][1] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 8 / 18)))  # the run's length


def test_itc_half_freezes_after_itc_steps(tmp_path) -> None:
    """A short fit: the ITC half stops changing (weights and BatchNorm statistics) at step ``itc_steps``."""
    import lightning as L

    from distill.data import ShapesDataModule
    from distill.training.teacher_pretraining import GroupedWarmupCosineLR
    from tests.helpers import TINY_DATA

    teacher = _matched_teacher()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step in (3, 6):
                snapshots[trainer.global_step] = {k: v.clone() for k, v in teacher.state_dict().items()}

    module = CrossEncoderPretraining(
        teacher=teacher, itc_steps=3, itm_into_towers=False,
        lr_scheduler=lambda optimizer: GroupedWarmupCosineLR(optimizer, warmup_steps=1),
    )
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Snapshot()])
    trainer.fit(module, datamodule=ShapesDataModule(**TINY_DATA, binding_negatives=True))
    before, after = snapshots[3], snapshots[6]
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith(("fusion", "itm_head", "type_embed")) for key in changed), changed
    assert not any(p.requires_grad for p in teacher.parameter_groups()["itc"])


def test_itc_steps_needs_the_grouped_schedule(tiny_teacher) -> None:
    module = CrossEncoderPretraining(teacher=tiny_teacher, itc_steps=2)
    with pytest.raises(ValueError, match="GroupedWarmupCosineLR"):
        module.configure_optimizers()


def test_mlm_predicts_masked_words_through_the_fusion_only() -> None:
    teacher = _matched_teacher()
    module = CrossEncoderPretraining(teacher=teacher, itc_weight=0.0, itm_weight=0.0, mlm_weight=1.0,
                                     itm_into_towers=False)
    batch = _batch()
    torch.manual_seed(0)
    loss = module.mlm_loss_of(batch, teacher.encode_image_tokens(batch["a"]["pixel_values"]).detach())
    assert torch.isfinite(loss) and float(loss.detach()) > 0.0
    loss.backward()
    assert module.mlm_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.any() for p in teacher.parameter_groups()["fusion"])
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameter_groups()["itc"])
    # the head trains with the fusion group, and is not part of the saved teacher
    optimizer = module.configure_optimizers()
    assert any(p is module.mlm_head.weight for group in optimizer.param_groups for p in group["params"])
    assert not any(key.startswith("mlm") for key in teacher.state_dict())


def test_mlm_masks_only_caption_words(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = _matched_teacher()
    module = CrossEncoderPretraining(teacher=teacher, mlm_weight=1.0, mlm_probability=1.0)
    seen = {}
    original = teacher.encode_text_tokens

    def spy(input_ids, attention_mask, **kwargs):
        seen["ids"] = input_ids.clone()
        return original(input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(teacher, "encode_text_tokens", spy)
    batch = _batch()
    module.mlm_loss_of(batch, teacher.encode_image_tokens(batch["a"]["pixel_values"]))
    ids, mask = batch["b"]["input_ids"], batch["b"]["attention_mask"].bool()
    words = mask & (ids >= 5)
    assert torch.equal(seen["ids"][words], torch.full_like(ids[words], 4))  # every word -> [MASK]
    assert torch.equal(seen["ids"][~words], ids[~words])  # [CLS], [SEP] and padding kept


def test_validation_rerank_is_bounded_by_teacher_max_pairs(tiny_teacher) -> None:
    """The ITC top-k re-ranking at validation sends at most ``teacher_max_pairs`` pairs per teacher forward."""
    import lightning as L

    from distill.data import ShapesDataModule
    from tests.helpers import TINY_DATA

    module = CrossEncoderPretraining(teacher=tiny_teacher, rerank_k=4, teacher_max_pairs=5)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, datamodule=ShapesDataModule(**TINY_DATA), verbose=False)
    assert module.scorer.calls and max(module.scorer.calls) <= 5
    assert sum(module.scorer.calls) >= 4 * TINY_DATA["num_val"]  # every image's top 4 captions, at least
    with pytest.raises(ValueError, match="teacher_max_pairs must be >= 1"):
        CrossEncoderPretraining(teacher=tiny_teacher, teacher_max_pairs=0)

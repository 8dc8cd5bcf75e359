"""The demo cross-encoder with the student's towers (``towers="student"``): sizes, halves, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.students import DualEncoder, TimmImageTower, TransformersTextTower
from distill.teachers import ShapesCrossEncoder

MATCHED = dict(towers="student", image_size=32, embed_dim=16, width=32, heads=2, text_layers=1,
               image_channels=(8, 16, 16, 32), text_intermediate=64, fusion_layers=1, fusion_stage=3, mlp_ratio=2)


def _inputs(n: int = 3, length: int = 9) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 30, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 6:] = 0
    return {"pixel_values": pixels}, {"input_ids": ids, "attention_mask": mask}


def test_itc_half_has_exactly_the_student_presets_parameters() -> None:
    """students/shapes-dual-encoder.yaml's architecture and the teacher's ITC half are the same size."""
    teacher = ShapesCrossEncoder(towers="student", embed_dim=64)
    student = DualEncoder(
        TimmImageTower("resnet10t", model_kwargs={"channels": [16, 32, 64, 128]}),
        TransformersTextTower(config=dict(model_type="bert", vocab_size=64, hidden_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=256, max_position_embeddings=64)),
        embed_dim=64,
    )
    groups = teacher.parameter_groups()
    assert sum(p.numel() for p in groups["itc"]) == sum(p.numel() for p in student.parameters()) == 639_641
    assert sum(p.numel() for p in groups["fusion"]) > 0
    assert not {id(p) for p in groups["itc"]} & {id(p) for p in groups["fusion"]}


def test_itc_embeddings_ignore_the_fusion_and_scores_read_both_sides() -> None:
    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(**MATCHED).eval()
    a, b = _inputs()
    with torch.no_grad():
        embedding = teacher.embed_a(a)
        scores = teacher.score(a, b)
        for parameter in teacher.parameter_groups()["fusion"]:
            parameter.add_(0.5)
        assert torch.equal(teacher.embed_a(a), embedding)  # ITC reads the towers only
        assert not torch.allclose(teacher.score(a, b), scores)  # the pair score goes through the fusion
    assert embedding.shape == (3, 16) and torch.allclose(embedding.norm(dim=-1), torch.ones(3))
    other = {"pixel_values": a["pixel_values"].flip(0)}
    with torch.no_grad():
        assert not torch.allclose(teacher.itm_logit(teacher.encode_image_tokens(other["pixel_values"]),
                                                    teacher.encode_text_tokens(**b), b["attention_mask"]),
                                  teacher.itm_logit(teacher.encode_image_tokens(a["pixel_values"]),
                                                    teacher.encode_text_tokens(**b), b["attention_mask"]))


def test_image_tokens_are_the_pooled_feature_then_the_stage_map() -> None:
    teacher = ShapesCrossEncoder(**MATCHED).eval()
    a, _ = _inputs()
    tokens = teacher.encode_image_tokens(a["pixel_values"])
    assert tokens.shape == (3, 1 + (32 // 16) ** 2, 32)
    with torch.no_grad():
        pooled = teacher.towers.image(a["pixel_values"])  # timm's own pooled forward
    assert torch.allclose(tokens[:, 0], pooled, atol=1e-6)


def test_score_pairs_matches_aligned_scoring() -> None:
    teacher = ShapesCrossEncoder(**MATCHED).eval()
    a, b = _inputs()
    a_index, b_index = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 0, 0])
    with torch.no_grad():
        pairs = teacher.score_pairs(a, b, a_index, b_index)
        aligned = teacher.score({"pixel_values": a["pixel_values"][a_index]},
                                {key: value[b_index] for key, value in b.items()})
    assert torch.allclose(pairs, aligned, atol=1e-5)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    teacher = ShapesCrossEncoder(**MATCHED).eval()
    loaded = ShapesCrossEncoder(weights=str(teacher.save_pretrained(tmp_path / "t"))).eval()
    assert loaded.config == teacher.config and loaded.config.image_channels == (8, 16, 16, 32)
    a, b = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.score(a, b), teacher.score(a, b))


def test_fusion_positions_are_unit_scale_beside_normalised_features(tmp_path: Path) -> None:
    """``fusion_positions``: each image token is LayerNorm(stage map) + position + LayerNorm(pixels), so the
    position is as large as each source; caption tokens get their own positions; the flag round-trips."""
    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(**MATCHED, fusion_raw=True, max_length=12, fusion_positions=True).eval()
    a, b = _inputs()
    with torch.no_grad():
        tokens = teacher.encode_image_tokens(a["pixel_values"])[:, 1:]
        text = teacher.encode_text_tokens(**b)[:, 1:]
        position = teacher.fusion_patch_pos.clone()
        teacher.fusion_patch_pos.zero_()
        assert torch.allclose(tokens - teacher.encode_image_tokens(a["pixel_values"])[:, 1:], position.expand_as(tokens),
                              atol=1e-5)
        teacher.fusion_text_pos.add_(1.0)
        assert torch.allclose(teacher.encode_text_tokens(**b)[:, 1:] - text, torch.ones_like(text), atol=1e-5)
        teacher.fusion_text_pos.sub_(1.0)
        teacher.fusion_patch_pos.copy_(position)
    assert 0.8 < float(position.pow(2).mean().sqrt()) < 1.2
    weak = ShapesCrossEncoder(**MATCHED, fusion_raw=True)
    assert float(weak.fusion_patch_pos.detach().pow(2).mean().sqrt()) < 0.05 and not hasattr(weak, "fusion_text_pos")
    loaded = ShapesCrossEncoder(weights=str(teacher.save_pretrained(tmp_path / "t"))).eval()
    assert loaded.config.fusion_positions
    with torch.no_grad():
        assert torch.allclose(loaded.score(a, b), teacher.score(a, b), atol=1e-5)


def test_a_saved_config_that_cannot_build_names_its_file(tmp_path: Path) -> None:
    import json

    folder = ShapesCrossEncoder(**MATCHED, fusion_raw=True, fusion_positions=True).save_pretrained(tmp_path / "t")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "fusion_raw": False}))
    with pytest.raises(ValueError, match=r"config\.json': fusion_positions needs towers='student' and fusion_raw"):
        ShapesCrossEncoder(weights=str(folder))


def test_transformer_teacher_keeps_its_weight_names_and_defaults(tmp_path: Path) -> None:
    """Folders written before the ``towers`` setting existed (no such key) load as transformer towers."""
    import json

    folder = ShapesCrossEncoder(width=32, heads=2, image_size=32, embed_dim=16).save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    for key in ("towers", "image_channels", "text_intermediate", "text_dropout", "fusion_stage"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = ShapesCrossEncoder(weights=str(folder))
    assert loaded.config.towers == "transformer" and hasattr(loaded, "patch_embed")


@pytest.mark.parametrize("settings, message", [
    (dict(towers="vit"), "towers"),
    (dict(towers="student", width=64), "image_channels"),
    (dict(towers="student", fusion_stage=5), "fusion_stage"),
    (dict(towers="student", fusion_positions=True), "fusion_positions"),
])
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesCrossEncoder(**settings)

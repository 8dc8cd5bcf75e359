"""Teacher adapters load from save_pretrained folders and score exactly like the wrapped models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.teachers import BlipITMTeacher, TextCrossEncoderTeacher, ViltRetrievalTeacher, is_frozen
from distill.teachers.hf_cross_encoder import PairTemplate, join_pairs

from tests.helpers import IMAGE_SIZE

CAPTIONS = ["a red circle", "a photo of a blue square", "the green triangle", "a big dog"]


def _text(folder: Path, texts: list[str], **kwargs) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt", **kwargs)
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def test_blip_itm_scores_match_model(tiny_models) -> None:
    teacher = BlipITMTeacher(str(tiny_models.blip))
    assert is_frozen(teacher) and not teacher.training and teacher.has_embeddings
    pixels = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = _text(tiny_models.blip, CAPTIONS)
    scores = teacher.score({"pixel_values": pixels}, text)
    assert scores.shape == (4,)
    with torch.no_grad():
        logits = teacher.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                               pixel_values=pixels).itm_score
        cosine = teacher.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                               pixel_values=pixels, use_itm_head=False).itm_score.diagonal()
    # BLIP's own retrieval score (its evaluation of COCO / Flickr retrieval): ITM match logit + ITC similarity.
    assert torch.allclose(scores, logits[:, 1] + cosine, atol=1e-5)
    # score_pairs encodes each image once and agrees with gathering the pairs.
    a_index, b_index = torch.tensor([0, 0, 3, 1]), torch.tensor([2, 1, 0, 1])
    pairs = teacher.score_pairs({"pixel_values": pixels}, text, a_index, b_index)
    direct = teacher.score({"pixel_values": pixels[a_index]}, {k: v[b_index] for k, v in text.items()})
    assert torch.allclose(pairs, direct, atol=1e-5)
    emb_a, emb_b = teacher.embed_a({"pixel_values": pixels}), teacher.embed_b(text)
    assert emb_a.shape == emb_b.shape == (4, 16)
    assert torch.allclose(emb_a.norm(dim=-1), torch.ones(4), atol=1e-5)
    with torch.no_grad():
        itc = teacher.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels,
                            use_itm_head=False).itm_score
    assert torch.allclose(emb_a @ emb_b.T, itc, atol=1e-5)


def test_blip_score_options(tiny_models) -> None:
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = _text(tiny_models.blip, CAPTIONS[:3])
    logit = BlipITMTeacher(str(tiny_models.blip), score="itm_logit").score({"pixel_values": pixels}, text)
    prob = BlipITMTeacher(str(tiny_models.blip), score="itm_prob").score({"pixel_values": pixels}, text)
    assert torch.allclose(prob, torch.sigmoid(logit), atol=1e-5)
    with_itc = BlipITMTeacher(str(tiny_models.blip), score="itm_logit", add_itc=True)
    itc = (with_itc.embed_a({"pixel_values": pixels}) * with_itc.embed_b(text)).sum(-1)
    assert torch.allclose(with_itc.score({"pixel_values": pixels}, text), logit + itc, atol=1e-5)
    with pytest.raises(ValueError, match="itm_logit"):
        BlipITMTeacher(str(tiny_models.blip), score="cosine")  # type: ignore[arg-type]


def test_vilt_scores_match_model(tiny_models) -> None:
    teacher = ViltRetrievalTeacher(str(tiny_models.vilt))
    assert is_frozen(teacher) and not teacher.has_embeddings
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = _text(tiny_models.vilt, CAPTIONS[:3])
    scores = teacher.score({"pixel_values": pixels}, text)
    with torch.no_grad():
        mask = torch.ones(3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long)
        logits = teacher.model(**text, pixel_values=pixels, pixel_mask=mask).logits
    assert scores.shape == (3,) and torch.allclose(scores, logits[:, 0], atol=1e-5)
    # Padding to a larger canvas with a pixel_mask (data.init_args.teacher_image_canvas) changes nothing.
    from distill.data.common import stack_images

    padded = stack_images(list(pixels), canvas=48)
    assert padded["pixel_values"].shape == (3, 3, 48, 48)
    assert torch.allclose(teacher.score(padded, text), scores, atol=1e-5)


def test_cross_encoder_joins_pairs_like_its_tokenizer(tiny_models) -> None:
    from transformers import AutoTokenizer

    teacher = TextCrossEncoderTeacher(str(tiny_models.cross_encoder))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.cross_encoder)
    queries = ["what is the capital of france", "who wrote hamlet"]
    passages = ["paris is the capital of france and the largest city", "hamlet"]
    a = tokenizer(queries, add_special_tokens=False, padding=True, return_tensors="pt")
    b = tokenizer(passages, add_special_tokens=False, padding=True, return_tensors="pt")
    a = {"text_ids": a["input_ids"], "text_mask": a["attention_mask"]}
    b = {"text_ids": b["input_ids"], "text_mask": b["attention_mask"]}
    joint = tokenizer(queries, passages, padding=True, return_tensors="pt")
    joined = teacher.join(a, b)
    assert all(torch.equal(joined[key], joint[key]) for key in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        expected = teacher.model(**joint).logits[:, 0]
    assert torch.allclose(teacher.score(a, b), expected, atol=1e-5)
    short = join_pairs(a["text_ids"], a["text_mask"], b["text_ids"], b["text_mask"], teacher.template, 10, 0)
    truncated = tokenizer(queries, passages, padding=True, truncation="only_second", max_length=10, return_tensors="pt")
    assert torch.equal(short["input_ids"], truncated["input_ids"])


def test_pair_template_of_the_real_minilm_tokenizer() -> None:
    from transformers import AutoTokenizer

    from distill.students import minilm_path

    template = PairTemplate.from_tokenizer(AutoTokenizer.from_pretrained(minilm_path()))
    assert (template.prefix, template.middle, template.suffix) == ((101,), (102,), (102,))
    assert (template.first_type, template.second_type) == (0, 1)


def test_teachers_name_the_missing_folder(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    for cls in (BlipITMTeacher, ViltRetrievalTeacher, TextCrossEncoderTeacher):
        with pytest.raises(FileNotFoundError, match="nowhere.*no such folder"):
            cls(missing)


def test_teachers_refuse_the_students_preprocessing(tiny_models) -> None:
    blip = BlipITMTeacher(str(tiny_models.blip))
    text = _text(tiny_models.blip, CAPTIONS[:2])
    with pytest.raises(ValueError, match="expects 32x32 images.*teacher_processor"):
        blip.score({"pixel_values": torch.randn(2, 3, 48, 48)}, text)
    with pytest.raises(ValueError, match="outside BlipITMTeacher's vocabulary.*teacher_processor"):
        blip.score({"pixel_values": torch.randn(2, 3, 32, 32)}, {"input_ids": torch.full((2, 4), 500),
                                                                 "attention_mask": torch.ones(2, 4).long()})
    cross = TextCrossEncoderTeacher(str(tiny_models.cross_encoder))
    with pytest.raises(ValueError, match="text_ids.*teacher_tokenizer"):
        cross.score(text, text)

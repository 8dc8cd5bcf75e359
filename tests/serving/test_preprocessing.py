"""An exported image student preprocesses as it was trained: through its ecosystem's processor and through search."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from distill.cli.recipe import read_recipe
from distill.data.batch import normalize_pixels
from distill.errors import InputError
from distill.instantiate import instantiate
from distill.serving.export import export_student
from distill.serving.index.corpus import load_image, tower_preprocessing
from distill.serving.loading import CONFIG_NAME, load_student
from tests.cli.test_real_recipes import tiny_overrides
from tests.helpers import DEMO, REPO_ROOT, TINY, build, draw_image

# Pixels equal to float32 rounding of one normalisation; embeddings of a tiny model on equal pixels.
PIXEL_TOLERANCE = 1e-5


def _recipe_parts(recipe: Path, overrides: list[str]) -> tuple[torch.nn.Module, L.LightningDataModule, dict]:
    spec = read_recipe(recipe, overrides)
    return instantiate(spec.student).eval(), instantiate(spec.data, L.LightningDataModule), spec.student


def _ecosystem_pixels(folder: Path, image: Image.Image) -> torch.Tensor:
    """The image through the processor the ecosystem loads from the export (transformers for CLIP, timm)."""
    if (folder / "preprocessor_config.json").is_file():
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor.from_pretrained(str(folder))(images=image, return_tensors="pt")["pixel_values"][0]
    from timm.data import create_transform, resolve_data_config

    timm_config = json.loads((folder / "tower_a" / "config.json").read_text())
    return create_transform(**resolve_data_config(pretrained_cfg=timm_config["pretrained_cfg"]))(image)


@pytest.mark.parametrize("recipe", ["coco/blip-itm-to-clip-cprd.yaml", "flickr/vilt-to-timm-bert-dcd.yaml"],
                         ids=lambda r: r.split("/")[0])
def test_paired_recipe_export_preprocesses_as_training(recipe: str, tmp_path: Path, tiny_models,
                                                       image_text_data) -> None:
    student, datamodule, spec = _recipe_parts(REPO_ROOT / "configs" / recipe,
                                              tiny_overrides(recipe, tiny_models, image_text_data, tmp_path))
    export_student(student, tmp_path / "export", student_spec=spec, datamodule=datamodule, onnx=False)
    datamodule.setup("test")
    dataset = datamodule.dataset("test")
    record = dataset.records[0]
    draw_image(record.image, "red", "circle", size=(47, 61))  # odd sizes: the resize rounds, the crop is off-centre
    trained = dataset[0]["pixels"]["pixel_values"]
    with Image.open(record.image) as image:
        ecosystem = _ecosystem_pixels(tmp_path / "export", image.convert("RGB"))
    config = json.loads((tmp_path / "export" / CONFIG_NAME).read_text())
    served = load_image(record.image, tower_preprocessing(config["towers"]["a"], "export"))["pixel_values"][0]
    assert trained.shape == ecosystem.shape == served.shape
    assert (ecosystem - trained).abs().max() <= PIXEL_TOLERANCE
    assert (served - trained).abs().max() <= PIXEL_TOLERANCE
    exported = load_student(tmp_path / "export")
    with torch.no_grad():
        expected = student.encode_a({"pixel_values": trained[None]})
        assert torch.allclose(exported.encode_a({"pixel_values": ecosystem[None]}), expected, atol=1e-5)


def test_clip_export_records_the_processor_it_trained_with(tmp_path: Path, tiny_models, image_text_data) -> None:
    from transformers import CLIPModel

    recipe = "coco/blip-itm-to-clip-cprd.yaml"
    student, datamodule, spec = _recipe_parts(REPO_ROOT / "configs" / recipe,
                                              tiny_overrides(recipe, tiny_models, image_text_data, tmp_path))
    export_student(student, tmp_path / "export", student_spec=spec, datamodule=datamodule, onnx=False)
    written = json.loads((tmp_path / "export" / "preprocessor_config.json").read_text())
    trained = json.loads(datamodule.student_image.to_json_string())
    for key in ("size", "crop_size", "do_center_crop", "image_mean", "image_std", "resample"):
        assert written[key] == trained[key], key
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model = CLIPModel.from_pretrained(str(tmp_path / "export")).eval()
        image = model.get_image_features(pixel_values=pixels)
        image = torch.nn.functional.normalize(getattr(image, "pooler_output", image), dim=-1)
        assert torch.allclose(image, student.encode_a({"pixel_values": pixels}), atol=1e-5)


def test_demo_export_preprocesses_as_the_rendered_training_images(tmp_path: Path) -> None:
    student, datamodule, spec = _recipe_parts(DEMO / "shapes-cprd.yaml", TINY)
    export_student(student, tmp_path / "export", student_spec=spec, datamodule=datamodule, onnx=False)
    datamodule.setup("test")
    rendered = datamodule.images["test"][0]  # uint8 [3, H, W], as the training batches see it
    Image.fromarray(rendered.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    trained = normalize_pixels(rendered)
    config = json.loads((tmp_path / "export" / CONFIG_NAME).read_text())
    steps = config["towers"]["a"]["preprocessing"]
    assert (steps["size"], steps["mean"], steps["std"]) == (datamodule.image_size, [0.5] * 3, [0.5] * 3)
    served = load_image(tmp_path / "scene.png", tower_preprocessing(config["towers"]["a"], "export"))["pixel_values"]
    assert (served[0] - trained).abs().max() <= PIXEL_TOLERANCE
    with torch.no_grad():
        assert torch.allclose(load_student(tmp_path / "export").encode_a({"pixel_values": served}),
                              student.encode_a({"pixel_values": trained[None]}), atol=1e-5)


def test_image_student_without_known_preprocessing_is_refused(tmp_path: Path) -> None:
    spec = {"class_path": "distill.students.DualEncoder", "init_args": {
        "tower_a": {"class_path": "distill.students.TimmImageTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.TransformersTextTower", "init_args": {"config": {
            "model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}}},
        "embed_dim": 16}}
    student = build(spec)
    with pytest.raises(InputError) as refused:
        export_student(student, tmp_path / "export", student_spec=spec, onnx=False)
    assert "\n" not in str(refused.value) and "preprocessed" in str(refused.value)
    assert "--config" in str(refused.value) and not (tmp_path / "export").exists()

"""Export of a late-interaction student: distill's own layout, loaded back exactly, ONNX token graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.serving.export import export_student
from distill.serving.loading import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, load_student, read_student_config
from distill.serving.student_spec import embedding_kind
from tests.helpers import (BERT_TINY, DENSE_SPEC, REPO_ROOT, TINY_DATA_OVERRIDES, batch_independent_late_student, build,
                           late_spec)

LATE_RECIPE = REPO_ROOT / "configs" / "demo" / "grid-late-infonce.yaml"
LATE_SPEC = late_spec(BERT_TINY)


def _batch(datamodule, size: int) -> dict:
    from distill.data import collate_pairs

    dataset = datamodule.dataset("test")
    return collate_pairs([dataset[i] for i in range(size)], datamodule.pad_token_id)


def test_embedding_kind_names_late_interaction_students() -> None:
    assert embedding_kind(batch_independent_late_student()) == "late-interaction"
    assert embedding_kind(build(DENSE_SPEC)) == "dense"


@pytest.mark.parametrize("similarity", ["filip", "colbert"])
def test_round_trip_gives_the_same_scores(tmp_path: Path, tiny_datamodule, similarity: str) -> None:
    import distill

    spec = json.loads(json.dumps(LATE_SPEC))
    spec["init_args"]["similarity"] = similarity
    student = build(spec)
    result = export_student(student, tmp_path / "out", student_spec=spec, datamodule=tiny_datamodule, onnx=False)
    assert {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, "tokenizer.json"} <= set(result.files)
    config = read_student_config(tmp_path / "out")
    assert config["embedding"] == {"kind": "late-interaction", "dim": 16, "similarity": similarity,
                                   "query_reduce": "mean"}
    assert config["ecosystem"]["layout"] == "distill" and config["weights"] == [{"file": WEIGHTS_NAME, "prefix": ""}]
    loaded = distill.load_student(tmp_path / "out")
    assert not loaded.training and loaded.similarity == similarity
    batch = _batch(tiny_datamodule, 6)
    with torch.no_grad():
        want = student.score(student.encode_a(batch["a"]), student.encode_b(batch["b"]))
        got = loaded.score(loaded.encode_a(batch["a"]), loaded.encode_b(batch["b"]))
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    card = (tmp_path / "out" / CARD_NAME).read_text()
    assert "late-interaction" in card and similarity in card


def test_onnx_towers_output_the_token_vectors_and_the_mask(tmp_path: Path, tiny_datamodule) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")

    student = build(LATE_SPEC)
    out = tmp_path / "out"
    export_student(student, out, student_spec=LATE_SPEC, datamodule=tiny_datamodule)
    session_a = ort.InferenceSession(str(out / "tower_a.onnx"), providers=["CPUExecutionProvider"])
    session_b = ort.InferenceSession(str(out / "tower_b.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session_b.get_outputs()] == ["tokens", "mask"]
    for size in (1, 5):
        batch = _batch(tiny_datamodule, size)  # captions of different lengths: padded rows included
        with torch.no_grad():
            want_a, want_b = student.encode_a(batch["a"]), student.encode_b(batch["b"])
        tokens_a, mask_a = session_a.run(None, {"pixel_values": batch["a"]["pixel_values"].numpy()})
        tokens_b, mask_b = session_b.run(None, {key: value.numpy() for key, value in batch["b"].items()})
        assert tokens_a.shape == tuple(want_a.tokens.shape) and tokens_b.shape == tuple(want_b.tokens.shape)
        assert tokens_a.shape[1] == 4  # 32 px at output stride 16: 2 x 2 patches
        assert mask_a.all() and np.array_equal(mask_b, want_b.mask.numpy())
        if size > 1:
            assert not mask_b.all()  # a padded caption: its padding rows are masked, not compared
        assert np.abs(tokens_a - want_a.tokens.numpy()).max() < 1e-4
        assert np.abs((tokens_b - want_b.tokens.numpy())[mask_b]).max() < 1e-4


def test_export_command_round_trip_of_a_late_interaction_checkpoint(tmp_path: Path, tiny_datamodule) -> None:
    from distill.cli.main import main
    from distill.cli.recipe import read_recipe
    from distill.instantiate import instantiate

    student = instantiate(read_recipe(LATE_RECIPE).student).eval()
    checkpoint = tmp_path / "late.ckpt"
    torch.save({"state_dict": {f"student.{key}": value for key, value in student.state_dict().items()},
                "epoch": 0, "global_step": 1}, checkpoint)
    main(["export", "--ckpt", str(checkpoint), "--config", str(LATE_RECIPE), "--out", str(tmp_path / "out"),
          "--no-onnx", *TINY_DATA_OVERRIDES])
    loaded = load_student(tmp_path / "out")
    batch = _batch(tiny_datamodule, 4)
    with torch.no_grad():
        want = student.score(student.encode_a(batch["a"]), student.encode_b(batch["b"]))
        got = loaded.score(loaded.encode_a(batch["a"]), loaded.encode_b(batch["b"]))
    assert torch.allclose(got, want, rtol=0, atol=1e-6)


def test_a_late_export_whose_weights_do_not_match_its_config_is_one_line(tmp_path: Path, tiny_datamodule) -> None:
    from distill.errors import InputError

    out = tmp_path / "out"
    export_student(build(LATE_SPEC), out, student_spec=LATE_SPEC, datamodule=tiny_datamodule, onnx=False)
    config = json.loads((out / CONFIG_NAME).read_text())
    config["student"]["init_args"]["embed_dim"] = 8
    (out / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(InputError) as error:
        load_student(out)
    message = str(error.value)
    assert "\n" not in message and "do not match" in message and "proj_a" in message and str(out) in message

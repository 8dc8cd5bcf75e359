"""`distill index` / `distill search` of a late-interaction export: a multi-vector index whose two-stage search
(token candidates, then the student's exact score) gives the exhaustive late-interaction ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from distill.cli.index import main as index_main
from distill.cli.search import main as search_main
from distill.errors import InputError
from distill.evaluation.late import TokenRows, TokenTable, late_top_k
from distill.serving.export import export_student
from distill.serving.index.folder import INDEX_META, open_index
from distill.serving.index.late import OFFSETS_NAME, TOKENS_NAME, encode_tokens
from distill.serving.index.searcher import open_searcher
from distill.serving.loading import load_student, load_tokenizer, read_student_config
from tests.helpers import BERT_NO_DROPOUT, TINY_DATA, build, error_line, late_spec

LATE_SPEC = late_spec(BERT_NO_DROPOUT)
DATA = {**TINY_DATA, "num_test": 20}  # 60 captions


@pytest.fixture(scope="module")
def late_index(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A late-interaction export and its float32 index of the 60 test captions, every stored token a candidate."""
    from distill.data import ShapesDataModule

    root = tmp_path_factory.mktemp("late-index")
    datamodule = ShapesDataModule(**DATA)
    datamodule.setup("fit")
    export_student(build(LATE_SPEC), root / "student", student_spec=LATE_SPEC, datamodule=datamodule, onnx=False)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": DATA}))
    index_main(["--student", str(root / "student"), "--data", str(data), "--out", str(root / "index"),
                "--chunk-size", "7", "--no-progress", "--vector-dtype", "float32", "--token-candidates", "100000"])
    return {"root": root, "datamodule": datamodule, "data": data, "student": root / "student",
            "index": root / "index"}


def exhaustive(student, queries: TokenTable, index_dir: Path, k: int) -> tuple[list[list[int]], torch.Tensor]:
    """The exhaustive late-interaction top ``k`` item ids of every query over the index's items, encoded afresh by
    the student (ties: the larger item id, as the index breaks them)."""
    _, _, items = open_index(index_dir)
    rows = items[0:len(items)]
    max_length = read_student_config(index_dir.parent / "student")["towers"]["b"]["max_length"]
    keys = TokenTable.cat(list(encode_tokens(student, load_tokenizer(index_dir.parent / "student"),
                                             [item.text for item in rows], "b", max_length, 16)))
    ids = torch.tensor([item.id for item in rows])
    ranking = late_top_k(queries, keys, k, student.score, key_ids=ids)
    return [[rows[int(r)].id for r in line if r >= 0] for line in ranking.index], ranking.scores


def test_index_folder_holds_tokens_offsets_and_a_faiss_index(late_index: dict) -> None:
    meta = json.loads((late_index["index"] / INDEX_META).read_text())
    assert meta["kind"] == "late-interaction" and meta["backend"] == "faiss" and meta["count"] == 60
    assert meta["vector_dtype"] == "float32"
    tokens = np.load(late_index["index"] / TOKENS_NAME)
    offsets = np.load(late_index["index"] / OFFSETS_NAME)
    assert tokens.shape == (meta["tokens"], 16) and offsets[0] == 0 and offsets[-1] == len(tokens)
    assert len(offsets) == 61 and (np.diff(offsets) >= 1).all()
    assert np.allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=1e-5)
    assert {TOKENS_NAME, OFFSETS_NAME, "faiss.index", "late.json", "items.jsonl"} <= set(meta["files"])


def test_search_by_image_and_text_equals_the_exhaustive_ranking(late_index: dict) -> None:
    student = load_student(late_index["student"])
    from distill.data import collate_pairs

    dataset = late_index["datamodule"].dataset("test")
    batch = collate_pairs([dataset[row] for row in range(0, 30, 3)], late_index["datamodule"].pad_token_id)
    rows = TokenRows()
    with torch.no_grad():
        rows.append(student.encode_a(batch["a"]))
    images = rows.finish()
    want_ids, want_scores = exhaustive(student, images, late_index["index"], 10)
    with open_searcher(late_index["index"]) as searcher:
        hits = searcher.search_vectors(images, k=10)
        assert [[hit.item.id for hit in line] for line in hits] == want_ids
        got = torch.tensor([[hit.score for hit in line] for line in hits])
        assert torch.allclose(got, want_scores, rtol=0, atol=1e-5)
        texts = [searcher.items[row].text for row in (0, 17, 42)]
        text_hits = searcher.search(texts, k=10)
        queries = searcher.encode_texts(texts)
    want_text_ids, _ = exhaustive(student, queries, late_index["index"], 10)
    assert [[hit.item.id for hit in line] for line in text_hits] == want_text_ids


def test_few_token_candidates_rank_a_subset_with_exact_scores(late_index: dict) -> None:
    student = load_student(late_index["student"])
    with open_searcher(late_index["index"], token_candidates=1) as searcher:
        texts = [searcher.items[row].text for row in range(0, 60, 6)]
        queries = searcher.encode_texts(texts)
        hits = searcher.search_vectors(queries, k=10)
    want_ids, want_scores = exhaustive(student, queries, late_index["index"], 60)
    for line, ids, scores in zip(hits, want_ids, want_scores):
        exact = dict(zip(ids, scores.tolist()))
        assert all(abs(hit.score - exact[hit.item.id]) < 1e-5 for hit in line)  # the score is the exact one
        assert [hit.score for hit in line] == sorted((hit.score for hit in line), reverse=True)
        assert line and line[0].item.id == ids[0]  # a caption's best match is itself: one of its own tokens


def test_cli_search_of_a_late_index_by_image_and_float16_default(late_index: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    index_main(["--student", str(late_index["student"]), "--data", str(late_index["data"]), "--out",
                str(tmp_path / "index16"), "--no-progress"])
    assert "indexed 60 items (late-interaction, " in capsys.readouterr().out
    meta = json.loads((tmp_path / "index16" / INDEX_META).read_text())
    assert meta["vector_dtype"] == "float16" and np.load(tmp_path / "index16" / TOKENS_NAME).dtype == np.float16
    item = late_index["datamodule"].corpus.split("test")[0]
    Image.fromarray(late_index["datamodule"].corpus.render(item)).save(tmp_path / "query.png")
    search_main(["--index", str(tmp_path / "index16"), "--image", str(tmp_path / "query.png"), "-k", "4",
                 "--token-candidates", "1000", "--json"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 4 and [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    search_main(["--index", str(late_index["index"]), "--query", item.captions[0], "-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "a_id", "score", "text"] and len(lines) == 4
    assert " ".join(lines[1].split()[4:]) == " ".join(item.captions[0].split())


def test_bad_late_requests_are_one_line(late_index: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["index", "--student", str(late_index["student"]), "--data", str(late_index["data"]), "--no-progress"]
    line = error_line(capsys, [*base, "--out", str(tmp_path / "a"), "--backend", "numpy"])
    assert "late-interaction" in line and "--backend faiss" in line
    line = error_line(capsys, [*base, "--out", str(tmp_path / "b"), "--top-k", "3"])
    assert "late-interaction student" in line and "--top-k" in line
    line = error_line(capsys, ["search", "--index", str(late_index["index"]), "--query", "a red circle",
                               "--token-candidates", "0"])
    assert "--token-candidates" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="token vectors"):
        with open_searcher(late_index["index"]) as searcher:
            searcher.search_vectors(np.zeros((1, 16), np.float32))


def test_a_damaged_late_index_is_refused_in_one_line(late_index: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(late_index["index"], copy)
    offsets = np.load(copy / OFFSETS_NAME)
    offsets[3] = offsets[2]
    np.save(copy / OFFSETS_NAME, offsets)
    line = error_line(capsys, ["search", "--index", str(copy), "--query", "a red circle"])
    assert OFFSETS_NAME in line and "rebuild" in line


def test_token_candidates_on_a_pooled_student_is_one_line(late_index: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import DENSE_SPEC

    export_student(build(DENSE_SPEC), tmp_path / "dense", student_spec=DENSE_SPEC,
                   datamodule=late_index["datamodule"], onnx=False)
    line = error_line(capsys, ["index", "--student", str(tmp_path / "dense"), "--data", str(late_index["data"]),
                               "--out", str(tmp_path / "index"), "--token-candidates", "8", "--no-progress"])
    assert "--token-candidates applies to late-interaction students" in line
    assert not (tmp_path / "index").exists()


def test_a_late_build_encodes_one_chunk_at_a_time_and_stores_what_one_pass_gives(
        late_index: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.serving.index import late as late_module
    from distill.serving.index.backends import BackendSettings
    from distill.serving.index.folder import build_index

    calls: list[int] = []
    real = late_module.encode_tokens

    def counted(student, tokenizer, texts, *args, **kwargs):
        calls.append(len(texts))
        return real(student, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(late_module, "encode_tokens", counted)
    build_index(late_index["student"], late_index["datamodule"], "test", tmp_path / "index", chunk_size=8,
                progress=False, settings=BackendSettings(backend="faiss", vector_dtype="float32"))
    assert max(calls) == 8 and sum(calls) == 60
    _, _, items = open_index(tmp_path / "index")
    student, tokenizer = load_student(late_index["student"]), load_tokenizer(late_index["student"])
    max_length = read_student_config(late_index["student"])["towers"]["b"]["max_length"]
    whole = TokenTable.cat(list(real(student, tokenizer, [item.text for item in items[0:60]], "b", max_length, 1000)))
    assert np.array_equal(np.load(tmp_path / "index" / OFFSETS_NAME), whole.offsets.numpy())
    assert np.abs(np.load(tmp_path / "index" / TOKENS_NAME) - whole.flat.numpy()).max() < 1e-5

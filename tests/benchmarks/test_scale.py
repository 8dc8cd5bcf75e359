"""``benchmarks/scale.py --quick``: the scale simulation runs end to end on tiny models and writes its section."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import REPO_ROOT


def load_scale() -> ModuleType:
    """The benchmark script as a module (it lives outside the package)."""
    spec = importlib.util.spec_from_file_location("scale_benchmark", REPO_ROOT / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 25 s of CPU: a dozen tiny recipe runs through Lightning
def test_quick_run_writes_its_section_with_the_growth_per_item(tmp_path: Path) -> None:
    out, results = tmp_path / "benchmarks.md", tmp_path / "results.json"
    out.write_text("# Benchmarks\n\n<!-- other:start -->\nkept as it was\n<!-- other:end -->\n")
    load_scale().main(["--quick", "--out", str(out), "--results", str(results), "--scratch", str(tmp_path / "work")])

    text = out.read_text()
    assert "<!-- other:start -->\nkept as it was\n<!-- other:end -->" in text
    section = text.split("<!-- scale:start -->")[1].split("<!-- scale:end -->")[0]
    assert f"Command: `python benchmarks/scale.py --quick --out {out}`" in section
    assert "| measurement | size | peak RSS MiB | above start MiB | peak anonymous MiB |" in section
    growth = re.search(r"Growth per caption, validation with the COCO recipe: (-?[\d,]+) bytes.*embeddings are "
                       r"([\d,]+) bytes per caption", section)
    assert growth is not None, section
    assert int(growth.group(2).replace(",", "")) == round(512 * 2 * (1 + 1 / 5))  # float16, D=512, + 1/5 image

    raw = json.loads(results.read_text())
    series = [raw[f"validation/growth/{n}"] for n in (8, 16)]
    assert [run["captions"] for run in series] == [40, 80]
    assert all(run["encode"]["peak"] >= run["before"] > 0 for run in series)
    two_stage = raw["evaluator/test/200"]["teacher"]
    assert 0 < two_stage["largest"] <= 512  # the COCO recipe's teacher_max_pairs bounds every forward
    assert two_stage["pairs"] == 200 * 256 + 1_000 * 200  # top-256 images->captions, all 200 images per caption
    assert 0 < max(raw["train/coco"]["calls"]) <= 512
    assert abs(raw["architectures"]["blip"]["check"] - 1) < 0.01  # BLIP's cost is the sum of its parts


@pytest.mark.slow  # about 30 s of CPU: two tiny `distill index` builds, two FAISS builds, one MiniLM chunk
def test_index_run_rewrites_only_its_sub_section_with_the_growth_per_passage(tmp_path: Path) -> None:
    out, results = tmp_path / "benchmarks.md", tmp_path / "results.json"
    out.write_text("# Benchmarks\n\n<!-- scale:start -->\nmeasured before\n<!-- scale-index:start -->\nstale\n"
                   "<!-- scale-index:end -->\nafter\n<!-- scale:end -->\n")
    load_scale().main(["--quick", "--only", "index", "--out", str(out), "--results", str(results), "--scratch",
                       str(tmp_path / "work")])

    text = out.read_text()
    assert text.startswith("# Benchmarks\n\n<!-- scale:start -->\nmeasured before\n<!-- scale-index:start -->\n")
    assert text.endswith("<!-- scale-index:end -->\nafter\n<!-- scale:end -->\n") and "stale" not in text
    section = text.split("<!-- scale-index:start -->")[1].split("<!-- scale-index:end -->")[0]
    assert "--only index" in section and "| measurement | size | peak RSS MiB |" in section
    projection = re.search(r"\*\*Peak: ([-\d.,]+) GiB of host memory\*\*", section)
    assert projection is not None, section
    assert "the float16 codes are 6.32 GiB of it" in section  # 8,841,823 x 384 x 2 bytes

    raw = json.loads(results.read_text())
    builds = [raw[f"index/{n}"] for n in (300, 600)]
    assert [run["passages"] for run in builds] == [300, 600] and all(run["backend_name"] == "faiss" for run in builds)
    assert all(run["encode"]["peak"] >= run["before"] > 0 and run["backend"]["peak"] > 0 for run in builds)
    vectors = raw["index-vectors/600"]
    assert 0 <= vectors["index_bytes"] - 600 * 384 * 2 < 4096  # the float16 codes once, and FAISS's header
    assert vectors["file_bytes"] > 600 * 384 * 2  # the .npy header before them
    assert raw["index-encoder"]["shapes"] == [[4, 384]]  # one chunk of 4 passages, all-MiniLM-L6-v2's width

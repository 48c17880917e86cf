"""Output folders a command owns (`auralsam2.utils.outputs`): what may be written, what is refused,
and how a command's own earlier output is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from auralsam2.paths import data_home
from auralsam2.utils.outputs import (
    OWNER_FILE,
    OutputFolderError,
    check_output_folder,
    claim_output_folder,
    owned_output_folder,
)


def _write(folder: Path, name: str, text: str = "x") -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_a_new_or_empty_folder_is_taken_and_marked(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        with owned_output_folder(out, "report") as stage:
            _write(stage, "index.html", "one")
        assert (out / "index.html").read_text() == "one" and (out / OWNER_FILE).is_file()


def test_its_own_output_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with owned_output_folder(out, "segment") as stage:
        _write(stage, "masks/000001.png")
        _write(stage, "masks/000002.png")
    with owned_output_folder(out, "segment") as stage:
        _write(stage, "masks/000001.png", "new")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging or old folder left


def test_a_failed_write_leaves_the_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with owned_output_folder(out, "report") as stage:
        _write(stage, "index.html", "good")
    with pytest.raises(RuntimeError), owned_output_folder(out, "report") as stage:
        _write(stage, "index.html", "half")
        raise RuntimeError("disk full")
    assert (out / "index.html").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_folder_of_the_users_a_symlink_and_the_data_folder_are_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    _write(mine, "thesis.tex", "keep")
    _write(mine, "sub/notes.txt", "keep")
    (tmp_path / "link").symlink_to(mine)
    other = tmp_path / "other"
    with owned_output_folder(other, "segment") as stage:
        _write(stage, "summary.json")
    for out, words in ((mine, "not empty"), (tmp_path / "link", "symbolic link"), (data_home(), "data folder"),
                       (data_home().parent, "data folder"), (other, "auralsam2 segment"), (mine / "thesis.tex", "file")):
        with pytest.raises(OutputFolderError, match=words), owned_output_folder(out, "report") as stage:
            _write(stage, "index.html")
    assert (mine / "thesis.tex").read_text() == "keep" and (mine / "sub" / "notes.txt").read_text() == "keep"
    assert not (mine / OWNER_FILE).exists()


def test_output_of_an_earlier_version_is_recognised(tmp_path: Path) -> None:
    out = tmp_path / "old"
    _write(out, "index.html", "<title>report</title>")
    assert check_output_folder(out, "report", written_before=lambda p: (p / "index.html").is_file()) == out
    with pytest.raises(OutputFolderError):
        check_output_folder(out, "report")


def test_leftovers_of_a_killed_swap_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with owned_output_folder(out, "report") as stage:
        _write(stage, "index.html")
    for leftover in (tmp_path / ".r.partial-99999", tmp_path / ".r.old-99999"):
        _write(leftover, OWNER_FILE, '{"command": "report"}')
    _write(tmp_path / ".r.partial-1", "not ours")  # no mark: never touched
    with owned_output_folder(out, "report") as stage:
        _write(stage, "index.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.partial-1", "r"]


def test_a_folder_completed_in_place_may_be_a_symlink_to_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "big-disk" / "cache"
    target.mkdir(parents=True)
    (tmp_path / "cache").symlink_to(target)
    assert claim_output_folder(tmp_path / "cache", "cache") == target
    assert (target / OWNER_FILE).is_file()
    _write(tmp_path / "foreign", "data.bin")
    (tmp_path / "foreign-link").symlink_to(tmp_path / "foreign")
    with pytest.raises(OutputFolderError, match="not empty"):
        claim_output_folder(tmp_path / "foreign-link", "cache")

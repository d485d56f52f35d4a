"""afinar.io: files and folders are published whole, with the mode the umask gives, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from afinar.io import atomic_dir, atomic_write_text, current_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_folder_replaces_the_old_one_with_the_umask_mode(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "old.bin").write_text("old")
    old_umask = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        with atomic_dir(out) as tmp:
            (tmp / "new.bin").write_text("new")
            assert not (out / "new.bin").exists()  # nothing visible before the end
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert mode(out) == 0o750  # not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary or .old folder left
    with atomic_dir(tmp_path / "private", mode=0o700):
        pass
    assert mode(tmp_path / "private") == 0o700


def test_a_failure_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.bin").write_text("keep")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.bin").write_text("half")
        raise RuntimeError("killed while saving")
    assert [p.name for p in out.iterdir()] == ["keep.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_file_gets_its_mode(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x", mode=0o600)
    assert mode(tmp_path / "a.txt") == 0o600 and (tmp_path / "a.txt").read_text() == "x"

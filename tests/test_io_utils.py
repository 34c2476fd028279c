"""atomic_write / atomic_write_folder: a file or folder appears whole, with ordinary permissions, or not at all."""
import os
from pathlib import Path

import pytest

from diffusers_mv3d.io_utils import atomic_write, atomic_write_folder


def test_new_file_gets_the_umask_mode_and_an_existing_one_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "new.txt", lambda tmp: Path(tmp).write_text("a"))
        assert os.stat(path).st_mode & 0o777 == 0o644 and Path(path).read_text() == "a"
        os.chmod(path, 0o600)
        atomic_write(path, lambda tmp: Path(tmp).write_text("b"))
        assert os.stat(path).st_mode & 0o777 == 0o600 and Path(path).read_text() == "b"
    finally:
        os.umask(umask)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_a_failed_folder_write_leaves_the_old_folder_and_no_partial_one(tmp_path):
    final = tmp_path / "model"
    atomic_write_folder(final, lambda tmp: (tmp / "weights.bin").write_text("old"))

    def fail(tmp):
        (tmp / "weights.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_folder(final, fail)
    assert os.listdir(tmp_path) == ["model"] and os.listdir(final) == ["weights.bin"]
    assert (final / "weights.bin").read_text() == "old"
    with pytest.raises(OSError, match="disk full"):
        atomic_write_folder(tmp_path / "new", fail)
    assert os.listdir(tmp_path) == ["model"]  # no partial new folder either


def test_a_folder_write_replaces_the_old_folder_whole(tmp_path):
    final = tmp_path / "model"
    atomic_write_folder(final, lambda tmp: (tmp / "a.txt").write_text("1"))
    atomic_write_folder(final, lambda tmp: (tmp / "b.txt").write_text("2"))
    assert os.listdir(final) == ["b.txt"] and os.listdir(tmp_path) == ["model"]

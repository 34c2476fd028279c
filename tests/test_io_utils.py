"""atomic_write: a file appears whole, with ordinary permissions, or not at all."""
import os
from pathlib import Path

import pytest

from diffusers_mv3d.io_utils import atomic_write


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

"""Writing files so that nothing on disk is ever half-written: a temporary name, then a rename."""

import os
import tempfile
from typing import Callable, Union


def atomic_write(path: Union[str, os.PathLike], write: Callable[[str], object]) -> str:
    """Call ``write(temporary_path)`` for a file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    The temporary file keeps ``path``'s suffix (writers pick formats by it) and is removed if ``write``
    fails. The file gets the permissions of a plain ``open(path, "w")`` (``0o666`` less the umask; an
    existing ``path`` keeps its own), not the private ``0o600`` of a temporary file. Returns ``path``
    as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, _file_mode(path))
        fsync_path(temporary)  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
        fsync_path(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def fsync_path(path: Union[str, os.PathLike]) -> None:
    """Flush a file, or a folder's entries, to disk (a rename after it survives a power cut)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(folder: Union[str, os.PathLike]) -> None:
    """:func:`fsync_path` every file and folder under ``folder``, the folder itself last."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def _file_mode(path: str) -> int:
    """The mode ``path`` has, or the one a new file gets (``0o666`` less the process umask)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask

"""Writing files and folders so that nothing on disk is ever half-written: a temporary name, then a rename.

:func:`atomic_write` writes one file, :func:`atomic_write_folder` a whole folder (a checkpoint, a
pipeline folder). Both remove the temporary when the writer fails, so ``path`` is either the old
content or the new one, never a part of it.
"""

import os
import shutil
import tempfile
from pathlib import Path
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


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> str:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def atomic_write_folder(final: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)``, then rename it to ``final``; on failure remove the temporary folder.

    The temporary folder is the sibling ``.tmp-NAME-PID``; an existing ``final`` is first renamed to
    ``.old-NAME-PID`` and deleted after the swap (``remove_stale_temporaries`` in
    :mod:`diffusers_mv3d.training.checkpointing` cleans up after a process killed in between).
    Returns ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        fsync_tree(tmp)  # every file on disk before the rename publishes the folder
        _replace_folder(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _replace_folder(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final`` by renames only; ``final`` is never a partial folder."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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

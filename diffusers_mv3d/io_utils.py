"""Writing files so that nothing on disk is ever half-written: a temporary name, then a rename."""

import os
import tempfile
from typing import Callable, Union


def atomic_write(path: Union[str, os.PathLike], write: Callable[[str], object]) -> str:
    """Call ``write(temporary_path)`` for a file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    The temporary file keeps ``path``'s suffix (writers pick formats by it) and is removed if ``write``
    fails. Returns ``path`` as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path

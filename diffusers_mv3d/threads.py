"""CPU threads for a block of work: what ``--num-threads`` settings of the trainer and the evaluation use."""

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(num_threads: Optional[int]) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)`` (None: leave as is), then restore the
    previous count (callers may run in-process: tests, notebooks)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

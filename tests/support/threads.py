"""One torch intra-op thread for tests of tiny models."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

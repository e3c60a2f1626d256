"""The calls a module gets, for tests whose promise is how much sampling or encoding a step does (a cache hit runs
no UNet, guidance 1 runs one evaluation per step, on-demand data samples only the rows it lacks)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def recorded_calls(module):
    """Yields a list that gets the batch size of every forward call of ``module`` made inside the block."""
    sizes: list[int] = []
    handle = module.register_forward_hook(lambda _module, args, _output: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()

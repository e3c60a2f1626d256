"""The calls a module gets, for tests whose promise is how much sampling or encoding a step does (a cache hit runs
no UNet, guidance 1 runs one evaluation per step, on-demand data samples only the rows it lacks)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def recorded_calls(module):
    """Yields a list that gets the batch size of every forward call of ``module`` made inside the block."""
    sizes: list[int] = []
    def record(_module, args, kwargs, _output):
        first = args[0] if args else next(iter(kwargs.values()))  # flow transformers take hidden_states=...
        sizes.append(first.shape[0])

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()

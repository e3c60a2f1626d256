"""Offline data worlds with small models the project trains itself (no weights are ever downloaded)."""


def ema_update(ema_parameters, parameters, step: int, max_decay: float) -> None:
    """One EMA step with warm-up: the decay grows with the step (1/10, 2/11, ...) up to ``max_decay``, so the
    random initial weights fade quickly. Both training loops of this package save the EMA weights."""
    import torch

    decay = min(max_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema_parameters), list(parameters), 1 - decay)

"""Progress reporting as an Unlearner callback: a terminal bar with the live losses (never inside the maths)."""

from __future__ import annotations

import sys
from typing import Callable


def progress_bar(total: int, description: str) -> Callable[[dict], None]:
    """A tqdm bar on stderr, shown only on a terminal, updated with forget/retain loss and cos(g_f, g_r), or with
    the single loss of a one-objective method (ESD)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, leave=False, file=sys.stderr, disable=None)

    def update(record: dict) -> None:
        bar.update(1)
        if "forget_loss" in record:
            bar.set_postfix(forget=f"{record['forget_loss']:.3f}", retain=f"{record['retain_loss']:.3f}",
                            cos=f"{record['cosine']:+.2f}", refresh=False)
        else:
            bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        if bar.n >= total:
            bar.close()

    return update

"""D_f and D_r as a host hands them to the recipe, and the one batching every host's losses go through.

``PairedData`` holds the forget and retain latents with their conditioning, row i of one paired with row i of the
other (forget prompt i and its concept-free twin i). ``batched_losses`` turns it into the Unlearner's two loss
callables for any model call, so the diffusers host, the in-graph (ComfyUI) host and any later one draw the same
batches, noise and t for the same data and seed. ``drawn_pairs`` says which pairs a paired run will draw, so that a
host samples those and no more; ``steps_to_sample`` says how far ahead of the training a host that samples on demand
must have sampled, and ``merge_rows`` adds newly sampled pairs to the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from rgd_core.errors import RGDError, RGDInputError
from rgd_core.method.losses import denoising_error
from rgd_core.method.unlearner import PROBE_BATCHES, UnlearnConfig, step_seed

prompt_seed = step_seed
"""``prompt_seed(seed, index)``: the starting-noise seed of prompt ``index`` when a host samples its data. It depends
on (seed, index) only, so any subset or batching gives the same latents; the same rule as the Unlearner's per-step
seeds (one function under two names)."""


@dataclass
class PairedData:
    """D_f and D_r as latents with their text conditioning; row i of the forget tensors pairs with row i of the
    retain tensors (forget prompt i and its concept-free twin i)."""

    forget_latents: Tensor
    retain_latents: Tensor
    forget_cond: dict[str, Tensor]
    retain_cond: dict[str, Tensor]
    key: str = ""
    # Which rows hold sampled latents (a bool per pair); None: all. A host that sampled only the pairs the run
    # draws (``drawn_pairs``) leaves the others zero, and drawing one of them is an error, never silent.
    sampled: Tensor | None = None
    # Trajectory reuse (the diffusers host's ``trajectory_points``): P noisy latents each trajectory passed through,
    # (pairs, P, *latent), and their timesteps as indices into the noise schedule, (pairs, P), the same for both
    # sides of a pair (they start from the same noise and take the same sampler steps). None: x0 only.
    forget_points: Tensor | None = None
    retain_points: Tensor | None = None
    point_times: Tensor | None = None

    def __len__(self) -> int:
        return self.forget_latents.shape[0]

    def to_tensors(self) -> dict[str, Tensor]:
        tensors = {"forget/latents": self.forget_latents, "retain/latents": self.retain_latents}
        if self.sampled is not None:
            tensors["sampled"] = self.sampled.to(torch.uint8)
        if self.point_times is not None:
            tensors.update({"forget/points": self.forget_points, "retain/points": self.retain_points,
                            "point_times": self.point_times})
        for side, cond in (("forget", self.forget_cond), ("retain", self.retain_cond)):
            tensors.update({f"{side}/cond/{key}": value for key, value in cond.items()})
        return {key: value.contiguous() for key, value in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], key: str = "") -> PairedData:
        def cond(side: str) -> dict[str, Tensor]:
            prefix = f"{side}/cond/"
            return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}

        sampled = tensors["sampled"].bool() if "sampled" in tensors else None
        return cls(tensors["forget/latents"], tensors["retain/latents"], cond("forget"), cond("retain"), key, sampled,
                   tensors.get("forget/points"), tensors.get("retain/points"), tensors.get("point_times"))

    @property
    def points_per_pair(self) -> int:
        """Noisy trajectory latents kept per pair besides x0 (0: x0 only)."""
        return 0 if self.point_times is None else self.point_times.shape[1]


def drawn_pairs(seed: int, steps: int, count: int, batch_size: int) -> list[int]:
    """The pair indices (sorted) that a paired run of ``steps`` steps draws from ``count`` pairs: the same draws as
    ``batched_losses`` makes on the Unlearner's step generators. A host samples these and no more: at 100 steps of
    8 from 800 pairs, 503 of them."""
    drawn: set[int] = set()
    for step in range(steps):
        drawn.update(batch_indices(torch.Generator().manual_seed(step_seed(seed, step)), count, batch_size).tolist())
        if len(drawn) == count:
            break
    return sorted(drawn)


def steps_to_sample(step: int, config: UnlearnConfig, judged: bool = False) -> int:
    """How many steps' pairs must be sampled before step ``step`` runs, when a host samples on demand.

    With the adaptive stop (``config.stop_ratio``, or a judge: ``judged``) the run may end at any probe, so the
    pairs are sampled one probe interval ahead (the first chunk also holds the probe's own batches): a run that
    stops has sampled at most the pairs of the steps up to the probe that stopped it. With fixed steps every step
    runs, so all of them are sampled at once."""
    if not (config.stop_ratio or judged):
        return config.steps
    chunk_end = (step // config.stop_every + 1) * config.stop_every
    return min(config.steps, max(chunk_end, PROBE_BATCHES))


def sampled_rows(data: PairedData) -> set[int]:
    """The pairs ``data`` holds sampled."""
    if data.sampled is None:
        return set(range(len(data)))
    return set(data.sampled.nonzero().flatten().tolist())


def merge_rows(data: PairedData, more: PairedData) -> None:
    """Copy the pairs ``more`` holds sampled, and ``data`` lacks, into ``data`` (in place), and mark them sampled.
    Both must be the same prompts' data (the same number of pairs and conditioning keys)."""
    if len(more) != len(data) or more.forget_cond.keys() != data.forget_cond.keys():
        raise RGDError("merging sampled pairs of other prompts; this is a bug in the host.")
    if more.points_per_pair != data.points_per_pair:
        raise RGDError("merging sampled pairs with another number of trajectory points; this is a bug in the host.")
    new = sorted(sampled_rows(more) - sampled_rows(data))
    if not new:
        return
    index = torch.tensor(new)
    data.forget_latents[index] = more.forget_latents[index]
    data.retain_latents[index] = more.retain_latents[index]
    if data.point_times is not None:
        data.forget_points[index] = more.forget_points[index]
        data.retain_points[index] = more.retain_points[index]
        data.point_times[index] = more.point_times[index]
    for ours, theirs in ((data.forget_cond, more.forget_cond), (data.retain_cond, more.retain_cond)):
        for key, value in theirs.items():
            ours[key][index] = value[index]
    if data.sampled is not None:
        data.sampled[index] = True
        if bool(data.sampled.all()):
            data.sampled = None


def rows_mask(rows: Sequence[int] | None, count: int) -> Tensor | None:
    """The ``PairedData.sampled`` mask for ``rows`` of ``count`` pairs (None: every row)."""
    if rows is None:
        return None
    mask = torch.zeros(count, dtype=torch.bool)
    mask[list(rows)] = True
    return mask


def scatter_rows(latents: Tensor, rows: Sequence[int] | None, count: int) -> Tensor:
    """``latents`` sampled for ``rows`` placed in a tensor of all ``count`` pairs, zeros elsewhere."""
    if rows is None:
        return latents
    full = latents.new_zeros((count, *latents.shape[1:]))
    full[list(rows)] = latents
    return full


def batch_indices(generator: torch.Generator, count: int, batch_size: int) -> Tensor:
    """The step's batch of pair indices (without replacement), drawn from a *copy* seeded with the step
    generator's initial seed. The Unlearner seeds one generator per step and calls the forget loss before the
    retain loss on it; drawing the indices from the seed rather than from the running stream gives both callables
    the same indices whatever the other one has consumed, while noise and t still come from the live stream."""
    index_generator = torch.Generator().manual_seed(generator.initial_seed())
    return torch.randperm(count, generator=index_generator)[: min(batch_size, count)]


def point_choice(generator: torch.Generator, count: int, points_per_pair: int) -> Tensor:
    """Trajectory reuse: which of its ``points_per_pair`` + 1 training points each of the step's ``count`` rows takes
    (0: x0 with fresh noise and t; j >= 1: the j-th noisy latent kept from its trajectory). Drawn, like
    ``batch_indices``, from a copy seeded with the step generator's seed (salted), so a forget row and its paired
    retain twin take the same point, and the live stream's noise and t are untouched."""
    choice_generator = torch.Generator().manual_seed((generator.initial_seed() + 0x7A1) % 2**63)
    return torch.randint(0, points_per_pair + 1, (count,), generator=choice_generator)


def batched_losses(
    call: Callable[[nn.Module, Tensor, Tensor, Mapping[str, Tensor]], Tensor],
    data: PairedData,
    noise_schedule: Tensor,
    prediction_type: str,
    batch_size: int = 8,
    paired: bool = True,
    place: Callable[[nn.Module, Tensor], Tensor] = lambda model, x0: x0,
):
    """(forget_loss, retain_loss) for the Unlearner, ``loss(model, generator) -> per-element squared error``, for any
    model call ``call(model, x_t, t, cond) -> prediction`` in the model's own parameterisation (t: the timestep, or
    sigma for flow models; ``noise_schedule`` is abar_t or sigma_t, as ``losses.denoising_error`` says);
    ``place(model, x0)`` moves a batch to where the model runs. Every host goes through this, so the same data and
    seed give the same batches, noise and t in all of them.

    With ``paired`` (the paper: zip of the unshuffled forget and retain loaders) both use the same indices, so forget
    prompt i is always balanced by its concept-free twin i; without it the retain batch is drawn independently."""
    if batch_size < 1:
        raise RGDInputError("batch_size must be at least 1.")
    if len(data) == 0 or data.retain_latents.shape[0] == 0:
        raise RGDInputError("the paired data are empty.")
    if paired and data.retain_latents.shape[0] != len(data):
        raise RGDInputError("paired batches need as many retain examples as forget examples.")

    def make(latents: Tensor, cond: Mapping[str, Tensor], salt: int, points: Tensor | None):
        def loss(model: nn.Module, generator: torch.Generator) -> Tensor:
            if paired:
                index = batch_indices(generator, latents.shape[0], batch_size)
            else:
                salted = torch.Generator().manual_seed((generator.initial_seed() + salt) % 2**63)
                index = batch_indices(salted, latents.shape[0], batch_size)
            if data.sampled is not None and not bool(data.sampled[index].all()):
                missing = index[~data.sampled[index]].tolist()
                raise RGDError(f"pairs {missing[:5]} were drawn but never sampled; the data were sampled for "
                               "another number of steps or batch size.")
            x0 = place(model, latents[index])
            batch_cond = {key: value[index] for key, value in cond.items()}
            return denoising_error(
                lambda x_t, t: call(model, x_t, t, batch_cond), x0, noise_schedule, generator, prediction_type,
                None if points is None else _trajectory_points(generator, index, points, data.point_times),
            )

        return loss

    return (make(data.forget_latents, data.forget_cond, 0, data.forget_points),
            make(data.retain_latents, data.retain_cond, 1, data.retain_points))


def _trajectory_points(generator: torch.Generator, index: Tensor, points: Tensor, times: Tensor):
    """(x_t, t) for ``denoising_error``: each row's chosen trajectory latent and its t, or t = -1 for x0."""
    choice = point_choice(generator, index.shape[0], points.shape[1])
    kept = (choice - 1).clamp(min=0)
    rows = torch.arange(index.shape[0])
    return points[index][rows, kept], torch.where(choice > 0, times[index][rows, kept], -1)

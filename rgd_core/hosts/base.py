"""The one unlearning recipe, and the small protocol a host implements to run it.

Every entry point (``rgd unlearn``, the ComfyUI node, the benchmarks, next the A1111/Forge tab and flow-matching
families) runs the same recipe:

    prompt pairs --host.paired_data--> PairedData --host.training(scope)--> Trainee
                 --batched_losses--> (forget_loss, retain_loss) --Unlearner--> trained module + records

A host is whatever owns the model: the diffusers pipeline components, ComfyUI's MODEL, a UI's loaded checkpoint.
It provides five things and nothing else:

- ``prediction_type`` and ``noise_schedule``: the model's own parameterisation ("epsilon", "v_prediction" or
  "flow") and training noise schedule (abar_t, or sigma_t for flow), so the loss is the denoising MSE the model was
  trained with (``losses.denoising_error``);
- ``evaluated_module``: the module whose forward is one evaluation of the model (the UNet, ComfyUI's diffusion
  model), so that every run reports the seconds and model evaluations of its data and training phases alike;
- ``paired_data(forget_prompts, retain_prompts, seed)``: D_f and D_r as latents with their conditioning, row i of
  one paired with row i of the other (sampled by the model itself, or encoded from the user's images); with
  ``samples_while_training`` set, the recipe asks for the pairs a few steps ahead of the training instead of all
  at once, so a run the adaptive stop ends early never samples the pairs of the steps it did not run;
- ``training(scope, lora_rank, lora_alpha, seed)``: a context manager that sets the model up to be trained on one
  scope and yields a ``Trainee``: the module the Unlearner trains, which of its parameters are trainable, and
  ``predict(module, x_t, t, cond)``, the model's prediction with the edit applied. Leaving the context undoes
  whatever the host did to its model (weight wrappers, devices); the model the user passed in is never written;
- what to do with the trained module (export a checkpoint, a LoRA, hand a MODEL back) stays the host's: it is the
  ``module`` of the Trainee it made, returned by ``run_unlearning``.

The maths (losses, batching, update rule, loop) is not a host's business: a host adapter holds none of it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Mapping, Protocol, Sequence

from torch import Tensor, nn

from rgd_core.edits.lora import lora_rank_alpha
from rgd_core.edits.scopes import LORA_SCOPE, check_scope
from rgd_core.errors import RGDInputError
from rgd_core.method.paired_data import (PairedData, batch_indices, batched_losses, drawn_pairs, merge_rows,
                                        sampled_rows, steps_to_sample)
from rgd_core.method.unlearner import UnlearnConfig, Unlearner, forget_objective_for, summarize

# predict(module, x_t, t, cond) -> the model's epsilon or v at DDPM timestep t (its velocity at noise level sigma for
# flow models), with the edit being trained applied
Predict = Callable[[nn.Module, Tensor, Tensor, Mapping[str, Tensor]], Tensor]


@dataclass
class Trainee:
    """What a host hands the recipe to train: ``module`` (the Unlearner trains its ``trainable`` parameters; the
    Unlearner deep-copies it unless ``in_place``), the prediction with the edit applied, and ``place(module, x0)``,
    which moves a batch to where the module runs. ``evaluated`` is the module whose forward is one model evaluation
    while training (default: the module the Unlearner trains)."""

    module: nn.Module
    predict: Predict
    trainable: Callable[[str, nn.Parameter], bool] | None = None
    in_place: bool = False
    place: Callable[[nn.Module, Tensor], Tensor] = lambda module, x0: x0
    evaluated: nn.Module | None = None


@contextlib.contextmanager
def phase(phases: dict, name: str, module: nn.Module | None):
    """Time a phase of the run and count the model evaluations in it: one per sample that goes through
    ``module``'s forward (a batch of 8 with classifier-free guidance's doubled batch counts 16). Adds
    ``{"seconds", "evaluations"}`` to ``phases[name]`` (a resumed or repeated phase accumulates)."""
    counted = {"evaluations": 0}

    def count(_module, args, kwargs, _output):
        x = args[0] if args else next(iter(kwargs.values()), None)
        counted["evaluations"] += int(x.shape[0]) if isinstance(x, Tensor) and x.ndim > 0 else 1

    handle = module.register_forward_hook(count, with_kwargs=True) if module is not None else None
    start = time.perf_counter()
    try:
        yield counted
    finally:
        if handle is not None:
            handle.remove()
        add_phases(phases, {name: {"seconds": time.perf_counter() - start, "evaluations": counted["evaluations"]}})


def add_phases(into: dict, phases: Mapping[str, Mapping]) -> dict:
    """Add ``phases`` (name -> {"seconds", "evaluations"}) into ``into``; a phase seen twice accumulates."""
    for name, values in phases.items():
        entry = into.setdefault(name, {"seconds": 0.0, "evaluations": 0})
        entry["seconds"] += values["seconds"]
        entry["evaluations"] += values["evaluations"]
    return into


class Host(Protocol):
    """The few things a host provides (see the module docstring)."""

    prediction_type: str
    noise_schedule: Tensor
    evaluated_module: nn.Module | None
    # True when the host's sampling never sees the edit being trained (it samples with a model that training does
    # not write), so that the recipe may sample pairs on demand as training goes (``steps_to_sample``); a host
    # without the attribute samples every pair training may draw before the first step.
    samples_while_training: bool

    def paired_data(self, forget_prompts: Sequence[str], retain_prompts: Sequence[str], seed: int,
                    rows: Sequence[int] | None = None) -> PairedData:
        """The paired data; ``rows`` are the pairs training will draw (``drawn_pairs``): sample those, leaving the
        others unsampled (``PairedData.sampled``), or sample all."""
        ...

    def training(self, scope: str, lora_rank: int, lora_alpha: float | None, seed: int) -> ContextManager[Trainee]:
        ...


@dataclass(frozen=True)
class RecipeSettings:
    """The settings of one run that are not the update rule's: which weights, how many pairs per step, the LoRA
    rank, and whether forget pair i is always batched with its retain twin i (the paper's zip of two loaders)."""

    config: UnlearnConfig
    scope: str = "full"
    batch_size: int = 8
    lora_rank: int = 4
    lora_alpha: float | None = None
    paired: bool = True
    data_seed: int = 0

    def __post_init__(self) -> None:
        # checked here, before a host spends minutes sampling data for a run that cannot start
        check_scope(self.scope)
        if self.batch_size < 1:
            raise RGDInputError(f"batch size must be at least 1, not {self.batch_size}.")
        if self.scope == LORA_SCOPE:
            lora_rank_alpha(self.lora_rank, self.lora_alpha)


@dataclass
class RecipeResult:
    module: nn.Module  # the trained module: the host's Trainee.module, edited
    records: list[dict]
    data: PairedData
    # {"data": {"seconds", "evaluations"}, "training": {...}}: what the user waited for, per phase ("data" is absent
    # when the caller passed the data in, and then timed it itself with ``phase``)
    phases: dict = field(default_factory=dict)


def run_unlearning(
    host: Host,
    forget_prompts: Sequence[str],
    retain_prompts: Sequence[str],
    settings: RecipeSettings,
    callbacks: Iterable[Callable[[dict], None]] = (),
    should_stop: Callable[[], bool] | None = None,
    data: PairedData | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    on_training: Callable[[nn.Module], ContextManager | None] | None = None,
    pair_concepts: Sequence[str] = (),
    judge: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> RecipeResult:
    """RGD (or GradDiff) on ``host``'s model: the paired data (``data`` when given, else the host makes it), the
    scope's trainable weights, the paired losses in the model's own parameterisation, the Unlearner.

    ``on_training(module)`` gets the module being trained and may return a context manager entered around the
    loop (gradient checkpointing, say); checkpointing and resume are the Unlearner's (bit-identical resume).
    ``pair_concepts`` (several concepts in one run: the concept pair i erases, ``PromptSet.pair_concepts``) makes the
    adaptive stop wait for every concept (and retire each one that is gone), and decides a default forget objective
    by how many there are and whether ``judge`` is given (``forget_objective_for``); with unpaired batches
    (``settings.paired`` off) it is not used. ``judge`` (the Unlearner's: the share of a probe of the model's own
    samples that still shows each concept) decides the stop instead of the loss ratio.
    """
    phases: dict = {}
    # checked before any sampling: a mismatch is a caller's bug, and minutes of data should not precede it
    pair_groups = _pair_groups(pair_concepts, len(forget_prompts) if forget_prompts is not None else len(data),
                                 settings)
    config = forget_objective_for(settings.config, len(set(pair_concepts)) if pair_groups is not None else 1,
                                  judged=judge is not None)
    on_demand = (getattr(host, "samples_while_training", False) and forget_prompts is not None
                 and (data is None or len(data) == len(forget_prompts)))
    if data is None:
        with phase(phases, "data", host.evaluated_module):
            rows = training_rows(settings, len(forget_prompts), len(retain_prompts),
                                 steps_to_sample(0, config, judge is not None) if on_demand else None)
            data = host.paired_data(forget_prompts, retain_prompts, settings.data_seed, rows=rows)
    with host.training(settings.scope, settings.lora_rank, settings.lora_alpha, config.seed) as trainee:
        forget_loss, retain_loss = batched_losses(trainee.predict, data, host.noise_schedule, host.prediction_type,
                                                  settings.batch_size, settings.paired, place=trainee.place)
        unlearner = Unlearner(trainee.module, forget_loss, retain_loss, config, trainee.trainable,
                              in_place=trainee.in_place, pair_groups=pair_groups, judge=judge)
        training_module = trainee.evaluated or unlearner.model
        sample_ahead = (_sampler_ahead(host, forget_prompts, retain_prompts, settings, data, phases, training_module,
                                       judge is not None)
                        if on_demand and data.sampled is not None else None)
        extra = on_training(unlearner.model) if on_training is not None else None
        with extra if extra is not None else contextlib.nullcontext():
            with phase(phases, "training", training_module):
                result = unlearner.run(callbacks=callbacks, should_stop=should_stop, checkpoint_path=checkpoint_path,
                                       checkpoint_every=checkpoint_every, resume_from=resume_from,
                                       before_step=sample_ahead)
    return RecipeResult(result.model, result.records, data, phases)


def _pair_groups(pair_concepts: Sequence[str], count: int, settings: RecipeSettings):
    """The Unlearner's ``pair_groups`` for several concepts: the concept of each pair a step generator draws (the
    paired batches' own indices). None for one concept, or when the retain batch is drawn on its own."""
    if len(set(pair_concepts)) < 2 or not settings.paired:
        return None
    if len(pair_concepts) != count:
        raise RGDInputError(f"{len(pair_concepts)} pair concepts for {count} pairs; give one per pair.")
    return lambda generator: [pair_concepts[i] for i in batch_indices(generator, count, settings.batch_size).tolist()]


def _sampler_ahead(host: Host, forget_prompts, retain_prompts, settings: RecipeSettings, data: PairedData,
                   phases: dict, training_module: nn.Module, judged: bool) -> Callable[[int], None]:
    """``before_step`` for sampling on demand: before step k, the host samples the pairs of the steps up to
    ``steps_to_sample(k)`` that ``data`` lacks and they are merged in. Their time and evaluations are the "data"
    phase's, taken out of the training phase whose clock (and, were it the same module, hook) saw them."""

    covered = {"steps": 0}  # the steps whose pairs are in ``data`` already: nothing to work out until the next chunk

    def before_step(step: int) -> None:
        through = steps_to_sample(step, settings.config, judged)
        if through <= covered["steps"]:
            return
        covered["steps"] = through
        rows = training_rows(settings, len(forget_prompts), len(retain_prompts), through)
        missing = sorted(set(rows) - sampled_rows(data)) if rows is not None else []
        if not missing:
            return
        spent: dict = {}
        with phase(spent, "data", host.evaluated_module):
            merge_rows(data, host.paired_data(forget_prompts, retain_prompts, settings.data_seed, rows=missing))
        add_phases(phases, spent)
        overlap = {"seconds": -spent["data"]["seconds"],
                   "evaluations": -spent["data"]["evaluations"] if host.evaluated_module is training_module else 0}
        add_phases(phases, {"training": overlap})

    return before_step


def training_rows(settings: RecipeSettings, forget_count: int, retain_count: int,
                  steps: int | None = None) -> list[int] | None:
    """The pairs the first ``steps`` steps (default: all) of a run of ``settings`` will train on, so that a host
    samples no more (None: all of them; the unpaired ablation draws retain rows on its own)."""
    if not settings.paired or forget_count != retain_count:
        return None
    steps = settings.config.steps if steps is None else steps
    return drawn_pairs(settings.config.seed, steps, forget_count, settings.batch_size)


def run_metadata(concept: str, prompt_preset: str, prompt_digest: str, forget_prompts: Sequence[str],
                 retain_prompts: Sequence[str], settings: RecipeSettings, sampler: Mapping, records: Sequence[dict],
                 backend: str) -> dict[str, object]:
    """The run as ``rgd_*`` safetensors metadata, the same keys from every host: what was erased (concept, prompt
    preset and digest, the prompts themselves), how (method, scope, steps, lr, lambda, truncation, batch, seed,
    LoRA rank, the whole config and the data sampler's settings), what came of it (the loss summary) and where it
    ran (``backend``: "diffusers", "comfyui", ...). Values keep their types; the file writers make them strings."""
    config = settings.config
    return {
        "rgd_method": config.method, "rgd_concept": concept, "rgd_prompt_preset": prompt_preset,
        "rgd_prompt_digest": prompt_digest, "rgd_scope": settings.scope, "rgd_steps": config.steps,
        "rgd_lr": config.lr, "rgd_retain_weight": config.retain_weight, "rgd_truncation": config.truncation,
        "rgd_truncation_threshold": config.truncation_threshold, "rgd_batch_size": settings.batch_size,
        "rgd_seed": config.seed, "rgd_train_prompts": len(forget_prompts), "rgd_lora_rank": settings.lora_rank,
        "rgd_config": json.dumps(asdict(config)), "rgd_sampler": json.dumps(dict(sampler), default=str),
        "rgd_forget_prompts": json.dumps(list(forget_prompts), ensure_ascii=False),
        "rgd_retain_prompts": json.dumps(list(retain_prompts), ensure_ascii=False),
        "rgd_summary": json.dumps(summarize(list(records))), "rgd_backend": backend,
    }


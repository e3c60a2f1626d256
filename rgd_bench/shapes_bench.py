"""`rgd bench shapes`: erase a concept from the offline text-to-image model and measure what else survives.

The paper's Stable Diffusion claim (docs/method.md section 4.2), measured on a model the project trains itself
(rgd_bench/worlds/shapes_model.py) with the attribute classifier as judge (rgd_bench/shapes_classifier.py).
For each concept ("striped", the analogue of nudity or a style; "triangle", the analogue of an object) every method
starts from the same model, gets the same steps and seeds, and is scored on held-out test prompts:

    erasure     share of forget-prompt samples in which the classifier sees the concept (lower is better)
    in-prompt   on those forget prompts, accuracy of the *other* attributes the prompt asks for
                ("red striped triangle on black" should still be a red triangle on black)
    retain      accuracy of every attribute the retain twins ask for (alignment on what must stay)
    collateral  for each neighbouring value of the same attribute ("dotted", "outlined" for "striped"), the share
                of its own prompts' samples that still show it (higher is better)
    FD          Frechet distance between the classifier features of the retain samples and of renders of what
                those prompts ask for (lower is better)

Methods: RGD and GradDiff on the same self-sampled paired data, RGD with a narrow retain set (one generic retain
prompt, SalUn's choice) and ESD (rgd_core.baselines.esd; text only, no retain set).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rgd_bench.class_metrics import frechet_distance
from rgd_bench.shapes_classifier import load_classifier
from rgd_bench.worlds import shapes, shapes_model
from rgd_bench.worlds.shapes_prompts import concept_attribute, joint_prompt_sets, shape_prompt_sets
from rgd_core.baselines.esd import ESDConfig, run_esd
from rgd_core.errors import RGDInputError
from rgd_core.evaluate.judges import JudgeProbe, image_judge
from rgd_core.evaluate.plots import loss_curves, sample_grid
from rgd_core.hosts.base import RecipeSettings, phase, training_rows
from rgd_core.hosts.diffusers_sd import SamplerSettings, build_paired_data, unlearn_sd
from rgd_core.method.paired_data import steps_to_sample
from rgd_core.method.unlearner import UnlearnConfig, default_stop_ratio
from rgd_core.prompts import NEIGHBOUR_SHARE, PromptSet
from rgd_core.progress import progress_bar

METHODS = ("RGD", "GradDiff", "RGD (narrow retain)", "ESD")
# The shapes model in either parameterisation: v-prediction (the first one) or rectified flow (the SD3/Flux kind)
MODELS = {"v_prediction": shapes_model.MODEL_PATH, "flow": shapes_model.FLOW_MODEL_PATH}
FLOW_METHODS = tuple(m for m in METHODS if m != "ESD")  # this ESD samples DDIM trajectories: epsilon/v models only
# several concepts in one run, the ablations: every concept ascended until the last has reached the stop's target
# (UnlearnConfig.retire_erased off), and each forget objective whatever the number of concepts and the stop ("RGD"
# takes the default, forget_objective_for: one mean; "RGD (judge stop)" the per-concept sum from three concepts).
# Results of 2026-12-01 call one mean "RGD" (the default then at any number), and those of the day before call it
# "RGD (one forget mean)" beside a "RGD" that was the per-concept sum.
NO_RETIRING = "RGD (no retiring)"
PER_CONCEPT_MEANS = "RGD (per-concept means)"
ONE_FORGET_MEAN = "RGD (one forget mean)"
JOINT_ABLATIONS = {NO_RETIRING: dict(retire_erased=False), PER_CONCEPT_MEANS: dict(forget_per_concept=True),
                   ONE_FORGET_MEAN: dict(forget_per_concept=False)}
# RGD whose adaptive stop asks the classifier, on the model's own samples of training prompts, whether the concept is
# still drawn (UnlearnConfig.stop_share), instead of comparing losses
JUDGE_STOP = "RGD (judge stop)"
JUDGE_PROBE = 32  # training forget prompts the judge samples at each probe


@dataclass(frozen=True)
class ShapesBenchConfig:
    """One comparison. Training settings are shared by every method (ESD uses steps, lr, batch, scope, seed)."""

    concepts: tuple[str, ...] = ("striped", "triangle")
    methods: tuple[str, ...] = ()  # () = every method the model takes (METHODS; FLOW_METHODS for the flow model)
    model: str = "v_prediction"  # which shapes model: a key of MODELS
    steps: int = 100  # the cap: the adaptive stop ends a run once the concept is gone (README: Erasure quality)
    lr: float = 1e-4
    retain_weight: float = 2.0  # lambda: the sweep's choice (README: Erasure quality, docs/results/shapes_sweeps.json)
    rgd_rule: str = "rgd"  # the update rule of the RGD methods: "rgd" or "rgd-adam" (projected in Adam's metric)
    truncation: str = "none"
    truncation_threshold: float = float("inf")
    batch_size: int = 16
    scope: str = "full"
    train_pairs: int = 256
    test_prompts: int = 64
    sample_steps: int = 25  # sampler steps of the evaluation and, unless data_steps says otherwise, of the data
    guidance: float = 4.0
    retain_guidance: float | None = None  # the retain side's data guidance (None: guidance; 1: no CFG, half its cost)
    precision: str = "fp32"  # the forward's precision while sampling the data and training (rgd unlearn --precision)
    data_sampler: str = "ddim"  # how the model samples its own training data (SAMPLERS of the diffusers host)
    data_steps: int | None = None  # that sampler's steps (None: sample_steps)
    trajectory_points: int = 0  # noisy latents kept per data trajectory as extra training points (0: x0 only)
    lazy_data: bool = True  # sample only the pairs training draws, as it goes (False: all first, as rgd once did)
    esd_negative_guidance: float = 1.0
    # the adaptive stop's target (None: the model's, default_stop_ratio: 5, or 7 for the flow model); 0: fixed steps
    # (but for the judge stop, whose target is stop_share)
    stop_ratio: float | None = None
    stop_every: int = 5
    stop_share: float = 0.0  # the judge stop's target (JUDGE_STOP): the share of its probe still showing the concept
    neighbour_share: float = NEIGHBOUR_SHARE  # retain twins naming a neighbour (rgd_core.prompts.neighbours)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RGDInputError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}.")
        if not self.methods:
            object.__setattr__(self, "methods", FLOW_METHODS if self.model == "flow" else METHODS)
        if self.stop_ratio is None:
            object.__setattr__(self, "stop_ratio", default_stop_ratio(flow=self.model == "flow"))
        if self.model == "flow" and self.data_sampler not in ("ddim", "euler"):
            raise RGDInputError(f"the flow model samples with euler (or ddim, the same step), not "
                                f"{self.data_sampler!r}; pass --data-sampler euler.")
        if self.model == "flow" and "ESD" in self.methods:
            raise RGDInputError(f"ESD runs on the v-prediction model only; with --model flow use some of "
                                f"{', '.join(FLOW_METHODS)}.")
        unknown = [m for m in self.methods if m not in (*METHODS, JUDGE_STOP, *JOINT_ABLATIONS)]
        if unknown:
            raise RGDInputError(f"unknown method {unknown[0]!r}; use some of {', '.join(METHODS)}, {JUDGE_STOP}, "
                                f"or with several concepts in one run {', '.join(JOINT_ABLATIONS)}.")
        ablations = [m for m in self.methods if m in JOINT_ABLATIONS]
        if ablations and not all(len(joint_parts(spec)) > 1 for spec in self.concepts):
            raise RGDInputError(f"{ablations[0]!r} compares runs of several concepts; give only joint concepts "
                                "(striped+triangle) with it.")
        if not self.concepts:
            raise RGDInputError("give at least one concept to erase, e.g. striped.")
        if self.rgd_rule not in ("rgd", "rgd-adam"):
            raise RGDInputError(f"the RGD methods' rule must be rgd or rgd-adam, not {self.rgd_rule!r}.")
        # the stop, neighbour and data settings are used only after the original model is scored: check them now
        UnlearnConfig(steps=self.steps, stop_ratio=self.stop_ratio, stop_every=self.stop_every,
                      stop_share=self.stop_share)
        self.data_sampler_settings()
        if not 0.0 <= self.neighbour_share <= 1.0:
            raise RGDInputError(f"the neighbour share must be between 0 and 1, not {self.neighbour_share}.")
        for spec in self.concepts:
            parts = joint_parts(spec)
            for part in parts:
                concept_attribute(part)  # a one-line error for a word the world does not know
            if len(parts) > 1 and "ESD" in self.methods:
                raise RGDInputError(f"{spec!r} erases several concepts in one run, which this ESD does not; leave ESD "
                                    "out of --methods.")


    def data_sampler_settings(self) -> SamplerSettings:
        """How the RGD and GradDiff methods sample their own training data (64 prompts a batch)."""
        steps = self.sample_steps if self.data_steps is None else self.data_steps  # 0 is refused, not replaced
        return SamplerSettings(steps=steps, guidance_scale=self.guidance,
                               batch_size=64, scheduler=self.data_sampler, trajectory_points=self.trajectory_points,
                               retain_guidance_scale=self.retain_guidance, precision=self.precision)


JOINT = "+"  # "striped+triangle": both concepts erased in one run
SEQUENTIAL = "RGD (one after the other)"  # a joint spec's baseline: one RGD run per concept, each on the last's output


def joint_parts(spec: str) -> list[str]:
    return [part.strip() for part in spec.split(JOINT) if part.strip()]


# --- scoring -----------------------------------------------------------------------------------------------------


def asked_attributes(prompts: Sequence[str]) -> list[dict[str, str | None]]:
    return [shapes.parse_caption(prompt) for prompt in prompts]


def attribute_hits(predicted: dict[str, np.ndarray], asked: list[dict], skip: str | None = None) -> np.ndarray:
    """1/0 for every (sample, attribute) the prompt names, except ``skip``: the alignment of each sample."""

    hits = []
    for i, wanted in enumerate(asked):
        for name, value in wanted.items():
            if value is None or name == skip:
                continue
            hits.append(predicted[name][i] == shapes.VALUES[name].index(value))
    return np.array(hits, dtype=float)


def reference_renders(asked: list[dict], seed: int) -> np.ndarray:
    """Renders of what each prompt asks for (attributes it leaves free drawn at random): FD's reference set."""

    rng = np.random.default_rng([seed, 7])
    attributes = []
    for wanted in asked:
        drawn = {name: wanted[name] or shapes.VALUES[name][rng.integers(len(shapes.VALUES[name]))]
                 for name in shapes.ATTRIBUTES}
        attributes.append(shapes.Attributes(**drawn))
    return shapes.render_batch(attributes, seed)


@dataclass
class EvalSet:
    """The fixed test prompts of one concept and the reference features they need."""

    attribute: str
    value: str
    forget: list[str]
    retain: list[str]
    neighbours: dict[str, list[str]]
    reference_features: np.ndarray

    @classmethod
    def build(cls, concept: str, test_prompts: int, seed: int, classifier, exclude: Sequence[str] = ()) -> EvalSet:
        """``exclude``: concepts erased in the same run, which this concept's retain and in-prompt measures leave
        out (their prompts are meant to lose them)."""
        attribute, value = concept_attribute(concept)
        _, test = shape_prompt_sets(concept, 1, test_prompts, seed=seed, exclude=exclude)
        neutral = "plain" if attribute == "modifier" else None
        neighbours = {}
        for other in shapes.VALUES[attribute]:
            if other not in (value, neutral):
                neighbours[other] = shape_prompt_sets(other, 1, test_prompts, seed=seed)[1].forget_prompts
        # Several renders per prompt: the reference should be the distribution the prompts ask for, not one draw.
        reference = reference_renders(asked_attributes(test.retain_prompts) * 4, seed)
        return cls(attribute, value, test.forget_prompts, test.retain_prompts, neighbours,
                   classifier.features(reference))


def score(components, unet, eval_set: EvalSet, classifier, config: ShapesBenchConfig) -> tuple[dict, dict]:
    """The five measures for one edited UNet, and the sample images (for the grid)."""

    def sample(prompts: list[str]) -> np.ndarray:
        return shapes_model.sample_images(components, prompts, seed=config.seed, steps=config.sample_steps,
                                          guidance_scale=config.guidance, unet=unet)

    concept_index = shapes.VALUES[eval_set.attribute].index(eval_set.value)
    forget_images, retain_images = sample(eval_set.forget), sample(eval_set.retain)
    forget_pred = classifier.predict(forget_images)
    retain_pred, retain_features = classifier.predict_and_features(retain_images)
    collateral = {}
    for other, prompts in eval_set.neighbours.items():
        seen = classifier.predict(sample(prompts))[eval_set.attribute]
        collateral[other] = float(np.mean(seen == shapes.VALUES[eval_set.attribute].index(other)))
    scores = {
        "erasure": float(np.mean(forget_pred[eval_set.attribute] == concept_index)),
        "in_prompt": float(attribute_hits(forget_pred, asked_attributes(eval_set.forget), eval_set.attribute).mean()),
        "retain": float(attribute_hits(retain_pred, asked_attributes(eval_set.retain)).mean()),
        "collateral": float(np.mean(list(collateral.values()))) if collateral else float("nan"),
        "collateral_per_value": collateral,
        "fd": frechet_distance(retain_features, eval_set.reference_features),
    }
    return scores, {"forget": forget_images, "retain": retain_images}


# --- the methods -------------------------------------------------------------------------------------------------


def unlearn(components, method: str, concept: str, config: ShapesBenchConfig, cache_dir, callbacks=(),
            sampled: dict | None = None, phases: dict | None = None, watch=None, classifier=None):
    """(edited UNet, step records) for one method; ``components`` is never changed. ``sampled`` keeps the
    self-sampled paired data between calls, so RGD and GradDiff train on data sampled once (the data phase is
    counted for the method that sampled it). ``phases`` receives the seconds and UNet evaluations of the data
    and training phases (not for ESD, whose data are its own training trajectories). ``watch(module)`` hears the
    module being trained before the first step. ``JUDGE_STOP`` needs the ``classifier``."""
    phases = {} if phases is None else phases

    narrow = method == "RGD (narrow retain)"
    parts = joint_parts(concept)
    if len(parts) > 1:
        train, _ = joint_prompt_sets(parts, config.train_pairs, len(parts), config.seed, config.neighbour_share)
    else:
        train, _ = shape_prompt_sets(concept, config.train_pairs, 1, seed=config.seed, narrow=narrow,
                                     neighbour_share=config.neighbour_share)
    if method == "ESD":
        esd = ESDConfig(steps=config.steps, lr=config.lr, negative_guidance=config.esd_negative_guidance,
                        start_guidance=config.guidance, ddim_steps=config.sample_steps, batch_size=config.batch_size,
                        scope=config.scope, seed=config.seed)
        return run_esd(components, train.forget_prompts, esd, callbacks=callbacks)
    rule = "graddiff" if method == "GradDiff" else config.rgd_rule
    unlearn_config = UnlearnConfig(method=rule, steps=config.steps, retain_weight=config.retain_weight, lr=config.lr,
                                   truncation=config.truncation, truncation_threshold=config.truncation_threshold,
                                   seed=config.seed, stop_ratio=config.stop_ratio, stop_every=config.stop_every,
                                   stop_share=config.stop_share, **JOINT_ABLATIONS.get(method, {}))
    judge = classifier_judge(components, classifier, train, config) if method == JUDGE_STOP else None
    sampler = config.data_sampler_settings()
    sampled = {} if sampled is None else sampled
    if narrow not in sampled:
        recipe = RecipeSettings(unlearn_config, config.scope, config.batch_size, data_seed=config.seed)
        # lazy: the pairs of the first steps now, the others as training draws them (run_unlearning samples on
        # demand, and a method that runs longer than the one before it samples only the pairs it adds)
        rows = training_rows(recipe, len(train), len(train), steps_to_sample(0, unlearn_config, judge is not None))
        with phase(phases, "data", components.unet):
            sampled[narrow] = build_paired_data(components, train, None, sampler, config.seed, cache_dir,
                                                rows=rows if config.lazy_data else None)
    return unlearn_sd(components, train, config=unlearn_config, scope=config.scope, batch_size=config.batch_size,
                      data=sampled[narrow], sampler=sampler, data_seed=config.seed, cache_dir=cache_dir,
                      callbacks=callbacks, phases=phases, watch=watch, precision=config.precision, judge=judge)


def classifier_judge(components, classifier, train: PromptSet, config: ShapesBenchConfig):
    """The Unlearner's judge for the shapes world: the UNet being trained samples the first ``JUDGE_PROBE`` forget
    prompts of the training set (fixed noise, the evaluation's sampler) and the classifier says which share of each
    concept's images still show it."""
    prompts = tuple(train.forget_prompts[:JUDGE_PROBE])
    groups = tuple(train.pair_concepts[:JUDGE_PROBE]) or (train.concept,) * len(prompts)
    if set(groups) != set(train.pair_concepts or [train.concept]):  # the pairs are interleaved: each is among them
        raise RGDInputError(f"the judge's {JUDGE_PROBE} probe prompts miss a concept of {train.concept!r}")
    # in training order (the probe's noise is per prompt index), not regrouped as judge_probe would
    probe = JudgeProbe(prompts, tuple(train.retain_prompts[:JUDGE_PROBE]), groups)
    wanted = [concept_attribute(group) for group in groups]

    def sample(unet, asked):
        return shapes_model.sample_images(components, asked, seed=config.seed, steps=config.sample_steps,
                                          guidance_scale=config.guidance, unet=unet)

    def shown(images) -> list[bool]:
        predicted = classifier.predict(images)
        return [bool(predicted[attribute][i] == shapes.VALUES[attribute].index(value))
                for i, (attribute, value) in enumerate(wanted)]

    return image_judge(sample, probe, shown)


def run_shapes_bench(
    config: ShapesBenchConfig,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    model_path: str | Path | None = None,
    classifier_path: str | Path | None = None,
) -> dict:
    """Every concept x (original + methods): the table as a dict; with ``out``, a grid and loss curves per concept.
    The committed shapes model of ``config.model`` and the committed classifier unless paths are given."""

    start = time.perf_counter()
    components = shapes_model.load_model(model_path or MODELS[config.model])
    classifier = load_classifier(*([classifier_path] if classifier_path else []))
    rows, figures = [], {}
    for concept in config.concepts:
        if len(joint_parts(concept)) > 1:
            rows += _joint_rows(components, classifier, concept, config, cache_dir, log, progress)
            continue
        eval_set = EvalSet.build(concept, config.test_prompts, config.seed, classifier)
        samples, histories, sampled = {}, {}, {}
        scores, samples["original"] = score(components, None, eval_set, classifier, config)
        rows.append({"concept": eval_set.value, "method": "original", **scores, "seconds": 0.0})
        log(_row_text(rows[-1]))
        for method in config.methods:
            callbacks = [progress_bar(config.steps, f"{eval_set.value} {method}")] if progress else []
            phases: dict = {}
            unet, records = unlearn(components, method, concept, config, cache_dir, callbacks, sampled, phases,
                                    classifier=classifier)
            scores, samples[method] = score(components, unet, eval_set, classifier, config)
            rows.append({"concept": eval_set.value, "method": method, **scores,
                         "seconds": float(sum(r["seconds"] for r in records)), "phases": phases,
                         "steps": len(records)})
            histories[method] = records
            log(_row_text(rows[-1]))
        if out is not None:
            figures[eval_set.value] = _write_figures(Path(out), eval_set, samples, histories)
    return {
        "config": asdict(config),
        "rows": rows,
        "figures": figures,
        # relative to the installed packages, so a committed report names no folder of the machine that made it
        "model": relative_to_packages(components.source),
        "wall_seconds": time.perf_counter() - start,
    }


def _joint_rows(components, classifier, spec: str, config: ShapesBenchConfig, cache_dir, log, progress) -> list[dict]:
    """Rows for a joint spec ("striped+triangle"): each concept scored on its own held-out prompts (without the
    other concepts), for the original model, each method trained once on all of them, and RGD run concept by
    concept, each run on the previous one's output (``SEQUENTIAL``)."""
    parts = joint_parts(spec)
    eval_sets = {part: EvalSet.build(part, config.test_prompts, config.seed, classifier,
                                     exclude=[p for p in parts if p != part]) for part in parts}
    edited = {"original": None}
    records: dict = {}
    for method in config.methods:
        callbacks = [progress_bar(config.steps, f"{spec} {method}")] if progress else []
        edited[method], records[method] = unlearn(components, method, spec, config, cache_dir, callbacks, {},
                                                  classifier=classifier)
    unet, records[SEQUENTIAL] = None, []
    for part in parts:
        base = components if unet is None else replace(components, unet=unet)
        unet, part_records = unlearn(base, "RGD", part, config, cache_dir, (), {})
        records[SEQUENTIAL] += part_records
    edited[SEQUENTIAL] = unet
    rows = []
    for method, model in edited.items():
        for part, eval_set in eval_sets.items():
            scores, _ = score(components, model, eval_set, classifier, config)
            seconds = float(sum(r["seconds"] for r in records.get(method, [])))
            rows.append({"concept": f"{eval_set.value} ({spec})", "method": method, **scores, "seconds": seconds,
                         "steps": len(records.get(method, []))})
            log(_row_text(rows[-1]))
    return rows


def _row_text(row: dict) -> str:
    steps = f"  {row['steps']} steps" if "steps" in row else ""
    return (f"{row['concept']:9s} {row['method']:20s} erasure {row['erasure']:.3f}  in-prompt {row['in_prompt']:.3f}  "
            f"retain {row['retain']:.3f}  collateral {row['collateral']:.3f}  FD {row['fd']:.2f}  "
            f"{row['seconds']:.0f} s{steps}")


def format_table(result: dict) -> str:
    """The table as fixed-width text (what `rgd bench shapes` prints)."""
    header = (f"{'concept':9s} {'method':20s} {'erasure':>8s} {'in-prompt':>9s} {'retain':>7s} {'collat.':>8s} "
              f"{'FD':>7s} {'seconds':>8s}")
    lines = [header, "-" * len(header)]
    for row in result["rows"]:
        lines.append(f"{row['concept']:9s} {row['method']:20s} {row['erasure']:8.3f} {row['in_prompt']:9.3f} "
                     f"{row['retain']:7.3f} {row['collateral']:8.3f} {row['fd']:7.2f} {row['seconds']:8.0f}")
    return "\n".join(lines)


GRID_COLUMNS = 8


def _write_figures(out: Path, eval_set: EvalSet, samples: dict, histories: dict) -> dict:
    half = GRID_COLUMNS // 2
    rows = {name: np.concatenate([images["forget"][:half], images["retain"][:half]])
            for name, images in samples.items()}
    titles = [_short(p) for p in eval_set.forget[:half] + eval_set.retain[:half]]
    grid = sample_grid(rows, out / f"shapes_{eval_set.value}_grid.png", titles)
    curves = loss_curves(histories, out / f"shapes_{eval_set.value}_losses.png")
    return {"grid": str(grid), "losses": str(curves)}


def _short(prompt: str, width: int = 18) -> str:
    """Column titles wrapped to two short lines."""
    words, lines, line = prompt.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def relative_to_packages(path: str) -> str:
    """``rgd_bench/weights/x.safetensors`` for a file inside the installed packages, else the path as given."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


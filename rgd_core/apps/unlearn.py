"""Headless concept unlearning of a single-file Stable Diffusion checkpoint: what ``rgd unlearn`` runs.

Settings are resolved in layers, each overriding the one before:

    built-in defaults  <  --preset values  <  TOML file (--config)  <  explicit command-line flags

TOML keys are the long option names with underscores (``retain_weight = 1.6``); an unknown key is an error, so a
typo never silently falls back to a default. The run loads the checkpoint offline, builds the concept's prompt
pairs, samples the paired data and trains (``unlearn_sd``), then writes ``<out>/<name>.safetensors`` and
``<out>/<name>.json``. Both files are written only after training finished, each atomically, so an interrupted or
failed run leaves nothing in ``out``.

Before any model loads, everything knowable is checked (``preflight``): every number finite and in range, the
output folder writable, the output names within the file system's limit, no existing output replaced without
``overwrite``, room on the disk for the outputs. During training the run's resumable state is written beside the
outputs (``<name>.resume.safetensors`` every ``checkpoint_every`` steps and when ``should_stop`` turns true, with
its settings in ``<name>.resume.json``); ``resume`` continues it to the same weights as an uninterrupted run, and a
finished run deletes it.

``format`` picks the model output: the single file (default), a diffusers folder ``<out>/<name>/`` (built aside and
renamed into place; an existing one is replaced only with ``overwrite``), both, or none (only the LoRA or difference
file). ``lora_out`` puts the LoRA in its own folder (a UI's Lora folder) and ``state_dir`` the resumable state in
another (so that a UI never lists it as a model). ``forget_images`` /
``retain_images`` name folders of the user's own images, which replace the base model's samples on that side.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import typing
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rgd_core.checkpoints.configs import (
    CONFIG_FAMILIES as CLI_FAMILIES,
)
from rgd_core.checkpoints.configs import (
    clip_tokenizer,
    default_cache_dir,
)
from rgd_core.checkpoints.configs import (
    config_folder as shipped_config_folder,
)
from rgd_core.checkpoints.export import (
    EXPORT_FORMATS,
    export_diffusers_folder,
    export_single_file,
    export_unet_diff,
    safe_output_folder,
    safe_output_path,
    unet_key_map,
)
from rgd_core.checkpoints.flow_load import FLOW_SAMPLING, flow_family, flux_variant, load_flow_components, \
    transformer_keys
from rgd_core.checkpoints.load import (
    PICKLE_SUFFIXES,
    UNET_PREFIX,
    detect_family,
    load_pipeline_components,
    read_key_shapes,
)
from rgd_core.edits.lora import lora_modules, merge_lora, save_diffusers_lora, save_kohya_lora
from rgd_core.edits.scopes import LORA_SCOPE, SCOPES, in_scope
from rgd_core.devices import AUTO as AUTO_DEVICE
from rgd_core.devices import PRECISIONS, check_bf16, move_components, resolve_device
from rgd_core.errors import RGDInputError, UnlearningCancelled
from rgd_core.evaluate.judges import (
    JUDGE_PROMPTS,
    JUDGES,
    base_probe_warning,
    image_judge,
    judge_probe,
    judge_test,
    judge_warning,
)
from rgd_core.files import atomic_write_bytes
from rgd_core.hosts.base import RecipeSettings, add_phases, phase, run_metadata, training_rows
from rgd_core.hosts.diffusers_sd import (
    PAPER_NUDITY_SD14,
    SAMPLERS,
    SamplerSettings,
    build_paired_data,
    generate_images,
    unlearn_sd,
)
from rgd_core.image_data import find_images, images_digest
from rgd_core.method.losses import TRUNCATION_MODES as TRUNCATIONS
from rgd_core.method.paired_data import steps_to_sample
from rgd_core.method.unlearner import (
    FORGET_OBJECTIVES,
    UnlearnConfig,
    default_stop_ratio,
    forget_objective_for,
    objective_name,
    summarize,
)
from rgd_core.method.update_rules import UPDATE_RULES
from rgd_core.preflight import (
    check_free_space,
    check_not_existing,
    check_numbers,
    check_output_folder,
    check_output_names,
    option_flag,
)
from rgd_core.progress import progress_bar
from rgd_core.prompts import (
    CONCEPT_SEPARATOR,
    LISTS_PRESET,
    NEIGHBOUR_SHARE,
    NUDITY_CONCEPTS,
    PRESET_NAMES,
    CustomTemplate,
    custom_preset,
    long_prompt_warning,
    parse_slots,
    prompt_lines,
    prompt_sets_from_inputs,
    split_concepts,
    unique_pair_count,
    unnamed_concept_warning,
)

METHODS = tuple(UPDATE_RULES)
# kohya: lora_unet_<original module> names (A1111, Forge, ComfyUI; diffusers reads them for SD and the released Flux
# width); diffusers: transformer.<diffusers module>.lora_A/B (peft; diffusers and ComfyUI), Flux.1 and SD3.x only.
LORA_FORMATS = ("kohya", "diffusers")
# "none": no model file, only the edit itself (the LoRA of --scope lora, the difference file of --scope cross-attn).
MODEL_FORMATS = (*EXPORT_FORMATS, "none")
# "custom" takes --custom-template and --slot lines; --forget-prompts/--retain-prompts files select the user's
# own lists.
PROMPT_PRESETS = PRESET_NAMES

# Held-out test prompts are only built to record their digest (for a later evaluation); strings are cheap.
TEST_PROMPTS = 100

# Built-in defaults: the paper's only Stable Diffusion run (lambda 1.6, no ascent above m = 1.1, Adam 1e-5, 100
# steps of 8 + 8, full UNet; the paper-nudity-sd14 preset pins the same values should these defaults change) and
# SD's usual sampler (50 DDIM steps at guidance 7.5).
@dataclass
class UnlearnSettings:
    """Every setting of ``rgd unlearn``, its type and its default: the one definition the command line, TOML files
    and the checks read (``DEFAULTS``, ``SETTING_TYPES``). None means "decided later" (family: from the file's
    keys; prompt_preset: from the concept; name: from the checkpoint and concept; sample_steps, guidance and sampler:
    the family's, ``sampling_defaults``; width and height: the model's native size)."""

    checkpoint: str | None = None
    concept: str | None = None
    out: str | None = None
    preset: str | None = None
    prompt_preset: str | None = None
    family: str | None = None
    config_folder: str | None = None
    method: str = "rgd"
    scope: str = "full"
    lora_rank: int = 4
    steps: int = 100
    lr: float = 1e-5
    retain_weight: float = 1.6
    truncation: str = "skip"
    truncation_threshold: float = 1.1
    batch_size: int = 8
    train_prompts: int = 800
    sample_steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    trajectory_points: int = 0
    retain_guidance: float | None = None
    width: int | None = None
    height: int | None = None
    text_encoders: list[str] | None = None
    seed: int = 0
    cache_dir: str | None = None
    name: str | None = None
    allow_pickle: bool = False
    format: str = "single-file"
    overwrite: bool = False
    forget_images: str | None = None
    retain_images: str | None = None
    synonyms: str | None = None
    custom_template: str | None = None
    slot: list[str] | None = None
    forget_prompts: str | None = None
    retain_prompts: str | None = None
    checkpoint_every: int = 25
    resume: bool = False
    neighbours: str | None = None
    neighbour_share: float = NEIGHBOUR_SHARE
    stop_ratio: float | None = None  # None: the family's, default_stop_ratio (5; 7 for Flux.1 and SD3.x)
    stop_every: int = 5
    forget_objective: str = "auto"  # several concepts: FORGET_OBJECTIVES (auto: forget_objective_for decides)
    judge: str | None = None  # evaluate.judges.JUDGES; None: the loss ratio decides the stop
    judge_clip: str | None = None
    judge_prompts: int = JUDGE_PROMPTS
    stop_share: float = 0.0
    device: str = AUTO_DEVICE
    precision: str = "fp32"  # devices.PRECISIONS
    gradient_checkpointing: bool = False
    lora_out: str | None = None
    save_lora: bool = True
    lora_format: str = "kohya"
    state_dir: str | None = None


def _setting_types() -> dict[str, type]:
    """Setting -> the type a resolved value must have (``str | None`` -> str, ``list[str] | None`` -> list)."""
    hints = typing.get_type_hints(UnlearnSettings)
    types = {}
    for name, hint in hints.items():
        options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        types[name] = typing.get_origin(options[0]) or options[0]
    return types


DEFAULTS: dict = asdict(UnlearnSettings())
SETTING_TYPES: dict[str, type] = _setting_types()

# TOML keys of earlier releases -> what to write now
RENAMED_KEYS = {"forget_per_concept": "forget_objective (\"per-concept\" for true, \"one-mean\" for false)"}

# Settings that may differ between an interrupted run and its --resume: they change neither the data nor the steps
# already taken (``steps`` may grow to train on).
RESUME_FREE = ("steps", "overwrite", "resume", "checkpoint_every", "format", "name", "out", "cache_dir", "lora_out",
               "save_lora", "state_dir", "device", "lora_format", "gradient_checkpointing")

# How each family samples its own data unless told otherwise: SD's usual 50 DDIM steps at guidance 7.5; SD3 and Flux
# their own steps and guidance with Euler steps along the flow (``flow_load.FLOW_SAMPLING``).
SD_SAMPLING = {"sample_steps": 50, "guidance": 7.5, "sampler": "ddim"}


def sampling_defaults(variant: str | None) -> dict:
    """The data sampler's defaults for a model: ``SD_SAMPLING``, or a flow variant's ("flux-dev", "flux-schnell",
    "sd3")."""
    if variant is None:
        return dict(SD_SAMPLING)
    steps, guidance = FLOW_SAMPLING[variant]
    return {"sample_steps": steps, "guidance": guidance, "sampler": "euler"}


def flow_variant(checkpoint: str | Path) -> str | None:
    """"flux-dev", "flux-schnell" or "sd3" for a Flux.1 / SD3.x file (from its header), else None."""
    shapes = read_key_shapes(checkpoint)
    family = flow_family(shapes)
    if family is None:
        return None
    return flux_variant(shapes) if family == "flux" else "sd3"


# Type each setting must have once resolved (TOML values are checked against it; ints are accepted as floats).


def _paper_preset() -> dict:
    keys = ("method", "retain_weight", "truncation", "truncation_threshold", "lr", "steps", "batch_size", "scope")
    # the paper's run: its fixed 100 steps, and retain twins that only drop the concept
    return {**{key: PAPER_NUDITY_SD14[key] for key in keys}, "stop_ratio": 0.0, "neighbour_share": 0.0}


def _fast_preset() -> dict:
    # The shapes measurements (benchmarks/time_to_erase.py, README "Time to erase"): DPM++ 2M at 40% of DDIM's steps
    # (10 for 25, then 8 with the adaptive stop) kept erasure and alignment within their seed-to-seed spread and
    # halved the time to erase; fewer pairs (64 of 256) cost 14 points of in-prompt accuracy on one concept, and a
    # doubled learning rate 6 to 13 points of triangle's in-prompt and collateral, so neither is part of it.
    # Carried over to SD at the same ratio: 20 DPM++ 2M steps for DDIM's 50. SD quality at these settings is not
    # measured here (no GPU); the evaluation counts are (benchmarks/sd_time_to_erase.py).
    return {"sampler": "dpm++2m", "sample_steps": 20}


PRESETS: dict[str, Callable[[], dict]] = {"paper-nudity-sd14": _paper_preset, "fast": _fast_preset}


# --- resolving settings ------------------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict:
    """The settings in a TOML file, checked: known keys only, values of the right type."""
    path = Path(path)
    if not path.is_file():
        raise RGDInputError(f"config file {path} does not exist.")
    tomllib = _toml_reader()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RGDInputError(f"config file {path} is not valid TOML ({error}).") from None
    for key, value in data.items():
        if key in RENAMED_KEYS:
            raise RGDInputError(f"config file {path}: {key!r} is now {RENAMED_KEYS[key]}.")
        if key not in DEFAULTS:
            raise RGDInputError(f"config file {path}: unknown key {key!r}; keys are the long option names "
                                "with underscores, e.g. retain_weight.")
        if key == "concept" and isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = f"{CONCEPT_SEPARATOR} ".join(value)  # several concepts
        data[key] = _check_type(key, value, path)
    return data


def _toml_reader():
    # Python 3.11's tomllib; the webuis' Python 3.10 (A1111, Forge's one-click package) has only the tomli package,
    # if that: the rest of rgd runs on 3.10, so only --config needs it.
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RGDInputError("reading a --config file needs Python 3.11 or the tomli package (pip install "
                                "tomli).") from None
    return tomllib


def _check_type(key: str, value, path: Path):
    wanted = SETTING_TYPES[key]
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if wanted is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise RGDInputError(f"config file {path}: {key} must be a list of strings, not {value!r}.")
        return value
    # bool is a subclass of int, so "steps = true" must be refused explicitly.
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise RGDInputError(f"config file {path}: {key} must be a {wanted.__name__}, not {value!r}.")
    return value


def resolve_settings(cli: Mapping, toml_path: str | Path | None = None) -> dict:
    """Merge defaults, preset, TOML file and the flags given on the command line (``None`` = not given). Several
    concepts (repeated ``--concept``, a TOML list) become one ``"A; B"`` text, as every host spells them."""
    given = {key: value for key, value in cli.items() if key in DEFAULTS and value is not None}
    if isinstance(given.get("concept"), (list, tuple)):
        given["concept"] = f"{CONCEPT_SEPARATOR} ".join(given["concept"])
    from_file = read_toml(toml_path) if toml_path else {}
    preset = given.get("preset", from_file.get("preset"))
    if preset is not None and preset not in PRESETS:
        raise RGDInputError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}.")
    settings = {**DEFAULTS, **(PRESETS[preset]() if preset else {}), **from_file, **given}
    _check_settings(settings)
    return settings


# (minimum, strictly above) per number setting; every one must also be finite (inf only for the threshold).
NUMBER_RANGES = {
    "steps": (1, None), "batch_size": (1, None), "train_prompts": (1, None), "sample_steps": (1, None),
    "width": (8, None), "height": (8, None),
    "lora_rank": (1, None), "seed": (0, None), "checkpoint_every": (0, None),
    "lr": (None, 0.0), "retain_weight": (0.0, None), "guidance": (0.0, None), "truncation_threshold": (None, 0.0),
    "neighbour_share": (0.0, None), "stop_ratio": (0.0, None), "stop_every": (1, None), "trajectory_points": (0, None),
    "retain_guidance": (0.0, None), "judge_prompts": (1, None), "stop_share": (0.0, None),
}


def _check_settings(settings: dict) -> None:
    for key in ("checkpoint", "concept", "out"):
        if not settings[key] or not str(settings[key]).strip():
            raise RGDInputError(f"{option_flag(key)} is required (on the command line or in the --config file).")
    choices = {"method": METHODS, "truncation": TRUNCATIONS, "family": CLI_FAMILIES, "lora_format": LORA_FORMATS,
               "prompt_preset": PROMPT_PRESETS, "format": MODEL_FORMATS, "scope": SCOPES, "sampler": tuple(SAMPLERS),
               "precision": PRECISIONS, "judge": JUDGES, "forget_objective": tuple(FORGET_OBJECTIVES)}
    for key, allowed in choices.items():
        if settings[key] is not None and settings[key] not in allowed:
            raise RGDInputError(f"{option_flag(key)} must be one of {', '.join(allowed)}, not {settings[key]!r}.")
    check_numbers(settings, NUMBER_RANGES, integers=[key for key in NUMBER_RANGES if SETTING_TYPES[key] is int])
    for key in ("width", "height"):  # whole latent cells: every family's VAE scales by 8 (Flux/SD3 need 16)
        if settings[key] is not None and settings[key] % 8:
            raise RGDInputError(f"{option_flag(key)} must be a multiple of 8 pixels, not {settings[key]}.")
    lists = [key for key in ("forget_prompts", "retain_prompts") if settings[key]]
    if len(lists) == 1:
        partner = "retain_prompts" if lists[0] == "forget_prompts" else "forget_prompts"
        raise RGDInputError(f"{option_flag(lists[0])} needs {option_flag(partner)} too: line i of one pairs with line i of the "
                            "other.")
    if lists and (settings["prompt_preset"] or settings["custom_template"]):
        raise RGDInputError("--forget-prompts/--retain-prompts replace the prompt preset; drop --prompt-preset and "
                            "--custom-template.")
    if settings["custom_template"] and settings["prompt_preset"] not in (None, "custom"):
        raise RGDInputError(f"--custom-template needs --prompt-preset custom (or none), not "
                            f"{settings['prompt_preset']!r}.")
    if settings["prompt_preset"] == "custom" and not settings["custom_template"]:
        raise RGDInputError("--prompt-preset custom needs --custom-template, e.g. 'a photo of {concept} {place}', "
                            "and one --slot 'place: in a park, at the beach' per slot.")
    if settings["slot"] and not settings["custom_template"]:
        raise RGDInputError("--slot fills the slots of --custom-template; give the template too.")
    _check_judge_settings(settings)
    edit_file = settings["scope"] == "cross-attn" or (settings["scope"] == LORA_SCOPE and settings["save_lora"])
    if settings["format"] == "none" and not edit_file:
        raise RGDInputError("nothing to save: --format none writes no model, and only --scope lora (its LoRA file) or "
                            "--scope cross-attn (its difference file) write anything else; choose another --format.")


def _check_judge_settings(settings: Mapping) -> None:
    if settings["stop_share"] >= 1:
        raise RGDInputError(f"--stop-share is a share of the judge's probe images: below 1, not "
                            f"{settings['stop_share']}.")
    if settings["judge_clip"] and settings["judge"] != "clip":
        raise RGDInputError("--judge-clip is the CLIP model of --judge clip; add --judge clip or drop --judge-clip.")
    for key in ("stop_share", "judge_prompts"):
        if not settings["judge"] and settings[key] != DEFAULTS[key]:
            raise RGDInputError(f"{option_flag(key)} is for a judge's stop; add --judge clip or --judge nudenet, or "
                                f"drop {option_flag(key)} (the loss ratio's target is --stop-ratio).")
    if settings["judge"] == "clip" and not settings["judge_clip"]:
        raise RGDInputError("--judge clip needs --judge-clip DIR, a local transformers CLIP folder (config.json + "
                            "model.safetensors), e.g. the one you give rgd eval --clip.")
    if settings["judge"] == "nudenet" and len(split_concepts(settings["concept"])) > 1:
        raise RGDInputError("--judge nudenet sees nudity only and cannot judge several concepts; use --judge clip.")


def default_prompt_preset(concept: str) -> str:
    """"nudity" for nudity-like concepts (the paper's prompt files), else "object" (the most generic templates)."""
    return "nudity" if concept.strip().lower() in NUDITY_CONCEPTS else "object"


SLUG_LENGTH = 48


def concept_slug(concept: str) -> str:
    """A file-name-safe form of the concept that never maps two concepts to one name.

    Lowercase ASCII words joined by dashes ("Van Gogh" -> "van-gogh"); accents are folded ("Café" -> "cafe"). When
    anything else was dropped or cut (other scripts, punctuation, a very long name), a short hash of the concept is
    appended ("Café" -> "cafe-1f0b2c3d", "裸体" -> "concept-9a8b7c6d"), so distinct concepts keep distinct files.
    """
    text = " ".join(concept.split()).lower()
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    # Only case and spaces may be lost for free ("Van Gogh" and "van gogh" name one concept); a dash in the
    # concept itself would make "van-gogh" and "van gogh" collide.
    lossless = slug == text.replace(" ", "-") and "-" not in text and len(slug) <= SLUG_LENGTH
    if lossless:
        return slug
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:SLUG_LENGTH].strip('-') or 'concept'}-{digest}"


def output_name(settings: Mapping) -> str:
    return settings["name"] or f"{Path(settings['checkpoint']).stem}-rgd-{concept_slug(settings['concept'])}"


# --- the run -----------------------------------------------------------------------------------------------------


def _unlearn_config(settings: Mapping):
    # None keeps the Unlearner's own default (+inf), which TOML and JSON cannot spell portably.
    threshold = settings["truncation_threshold"]
    extra = {} if threshold is None else {"truncation_threshold": threshold}
    return UnlearnConfig(method=settings["method"], steps=settings["steps"], lr=settings["lr"],
                         retain_weight=settings["retain_weight"], truncation=settings["truncation"],
                         seed=settings["seed"], stop_ratio=settings["stop_ratio"],
                         stop_every=settings["stop_every"], stop_share=settings["stop_share"],
                         forget_per_concept=FORGET_OBJECTIVES[settings["forget_objective"]], **extra)


def load_components(checkpoint: str | Path, family: str | None = None, config_folder: str | Path | None = None,
                    cache_dir: str | Path | None = None, allow_pickle: bool = False,
                    text_encoders: Sequence[str | Path] = ()):
    """Components of a single-file checkpoint and the config folder they were loaded with (None for a Flux.1 /
    SD3.x file, whose configs come from its shapes and whose text encoders come from it or ``text_encoders``:
    ``flow_load.load_flow_components``). The family comes from the file's keys; only ``family="sd2-v"`` adds
    something keys cannot tell (v-prediction), by picking the sd2-v configs. ``config_folder`` overrides the
    shipped configs."""

    shapes = read_key_shapes(checkpoint, allow_pickle)
    found = flow_family(shapes)
    if found is not None:
        if family is not None or config_folder is not None:
            raise RGDInputError(f"{Path(checkpoint).name} is a {found} model, whose family and configs come from its "
                                "keys; drop --family and --config-folder.")
        return load_flow_components(checkpoint, text_encoders), None
    if text_encoders:
        raise RGDInputError("--text-encoders is for Flux.1 and SD3.x files, which keep their text encoders apart; an "
                            "SD1/SD2/SDXL checkpoint holds its own.")
    found = detect_family(shapes, shapes)
    if family is not None and family.removesuffix("-v") != found:
        raise RGDInputError(f"{Path(checkpoint).name} is an {found} checkpoint by its keys, not {family}.")
    folder = config_folder or shipped_config_folder(family or found, cache_dir)
    prediction = "v_prediction" if family == "sd2-v" else None
    components = load_pipeline_components(checkpoint, folder, found, prediction, allow_pickle)
    return components, folder


def _data_cache(settings: Mapping) -> Path:
    """Where sampled training data are kept: sampling is most of a run's time, and reruns that change only the
    training hyper-parameters reuse it (the cache key covers model, prompts, sampler and seed)."""

    return Path(settings["cache_dir"] or default_cache_dir()) / "sd_data"


@dataclass(frozen=True)
class OutputPlan:
    """Every path a run may write, known before any work starts (None: not written by this run)."""

    folder: Path
    model_file: Path | None
    diffusers_folder: Path | None
    report: Path
    lora: Path | None
    diff: Path | None
    resume_state: Path
    resume_settings: Path

    @property
    def results(self) -> list[Path]:
        return [p for p in (self.model_file, self.diffusers_folder, self.report, self.lora, self.diff) if p]


def output_plan(settings: Mapping) -> OutputPlan:
    name = output_name(settings)
    folder = Path(settings["out"])
    model_file = safe_output_path(folder, name)
    stem = model_file.name.removesuffix(".safetensors")
    diffusers = settings["format"] in ("diffusers", "both")
    lora = settings["scope"] == LORA_SCOPE and settings["save_lora"]
    state = Path(settings["state_dir"] or folder)
    return OutputPlan(
        folder=folder,
        model_file=model_file if settings["format"] in ("single-file", "both") else None,
        diffusers_folder=safe_output_folder(folder, name).resolve() if diffusers else None,
        report=folder / f"{stem}.json",
        lora=safe_output_path(Path(settings["lora_out"] or folder), stem + "-lora") if lora else None,
        diff=safe_output_path(folder, stem + "-diff") if settings["scope"] == "cross-attn" else None,
        resume_state=state / f"{stem}.resume.safetensors",
        resume_settings=state / f"{stem}.resume.json",
    )


def check_outputs(settings: Mapping, plan: OutputPlan) -> None:
    """The checks on where the run will write, made before the model loads (``preflight``)."""
    check_output_folder(plan.folder)
    for key in ("lora_out", "state_dir"):
        if settings[key]:
            check_output_folder(Path(settings[key]), option_flag(key))
    for path in plan.results + [plan.resume_state, plan.resume_settings]:
        check_output_names(path.parent, [path.name])
    if settings["resume"]:
        if not plan.resume_state.is_file():
            raise RGDInputError(f"nothing to resume: no interrupted run's state at {plan.resume_state}; run "
                                "without --resume.")
        saved = _read_resume_settings(plan.resume_settings)
        for key in sorted(set(DEFAULTS) - set(RESUME_FREE)):
            # a setting added after the run was interrupted had its default then
            if saved.get(key, _jsonable(DEFAULTS[key])) != _jsonable(settings[key]):
                raise RGDInputError(f"--resume: the interrupted run had {option_flag(key)} {saved.get(key)!r}, this one "
                                    f"{settings[key]!r}; resume with the same settings (only --steps may grow).")
    elif plan.resume_state.exists() and not settings["overwrite"]:
        raise RGDInputError(f"an interrupted run left its state at {plan.resume_state}: add --resume to continue "
                            "it, or --overwrite to start over.")
    check_not_existing(plan.results, settings["overwrite"])
    check_free_space(plan.folder, _expected_bytes(settings), "this run's output")


def _read_resume_settings(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RGDInputError(f"--resume: {path} (the interrupted run's settings) is missing or unreadable; start "
                            "over with --overwrite.") from None


def _jsonable(value):
    return json.loads(json.dumps(value))


def _expected_bytes(settings: Mapping) -> int:
    """A generous estimate of what the run writes at its peak: the model file(s), the LoRA or difference file,
    and the resume state (trainable weights + Adam's two moments, fp32, twice while one replaces the other)."""

    checkpoint = Path(settings["checkpoint"])
    size = checkpoint.stat().st_size
    try:
        shapes = read_key_shapes(checkpoint, allow_pickle=False)  # the header only: instant
    except RGDInputError:
        if not settings["allow_pickle"]:
            raise  # a refused pickle or a broken file: say so now, not after the model started loading
        shapes = {}  # an allowed pickle is read once, when the model loads; estimate from the file size
    numel = {key: math.prod(shape) for key, shape in shapes.items()}
    if flow_family(shapes):
        denoiser = set(transformer_keys(shapes))
    else:
        denoiser = {key for key in shapes if key.startswith(UNET_PREFIX)}
    unet = {key: n for key, n in numel.items() if key in denoiser}
    total = sum(numel.values()) or size // 2
    if settings["scope"] == LORA_SCOPE:  # rank-r factors of the attention projections: ~1% of the UNet at rank 4
        scoped = sum(unet.values()) // 100
    else:
        scoped = sum(n for key, n in unet.items() if in_scope(key, settings["scope"]))
    scoped = scoped or total
    needed = 2 * 3 * 4 * scoped  # resume state
    if settings["format"] in ("single-file", "both"):
        needed += size
    if settings["format"] in ("diffusers", "both"):
        needed += 4 * total  # diffusers folders are written in fp32
    if settings["scope"] in ("cross-attn", LORA_SCOPE):
        needed += 4 * scoped
    return needed


def build_prompts(settings: Mapping):
    """(train, test, prompt preset) from the settings: a preset, a custom template with --slot lines, or the
    user's own paired prompt files."""

    if settings["forget_prompts"]:
        forget, retain = (read_prompt_file(settings[key], option_flag(key)) for key in ("forget_prompts", "retain_prompts"))
        preset = LISTS_PRESET
    else:
        forget = retain = None
        preset = settings["prompt_preset"] or ("custom" if settings["custom_template"]
                                               else default_prompt_preset(settings["concept"]))
    test_count = TEST_PROMPTS
    if preset == "custom" and "{concept}" in (settings["custom_template"] or ""):  # a short custom slot list may hold fewer held-out prompts than the presets do
        spec = custom_preset(CustomTemplate(settings["custom_template"] or "", parse_slots(settings["slot"] or [])))
        test_count = min(TEST_PROMPTS, unique_pair_count(spec, "test"))
    train, test = prompt_sets_from_inputs(
        settings["concept"], preset, settings["train_prompts"], test_count, settings["seed"],
        synonyms=settings["synonyms"], custom_template=settings["custom_template"], custom_slots=settings["slot"],
        forget_prompts=forget, retain_prompts=retain, neighbours=settings["neighbours"],
        neighbour_share=settings["neighbour_share"])
    return train, test, preset


def read_prompt_file(path: str | Path, option: str) -> list[str]:
    """One prompt a line (blank lines skipped), UTF-8."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise RGDInputError(f"{option} {path} cannot be read as UTF-8 text ({reason}).") from None
    lines = prompt_lines(text)
    if not lines:
        raise RGDInputError(f"{option} {path} holds no prompts; write one prompt a line.")
    return lines


def input_warnings(settings: Mapping, train, forget_images, retain_images) -> list[str]:
    """Reasons to think the input is not what the user meant (logged, never fatal): forget captions that never name
    the concept, the same images on both sides, prompts the text encoder will cut, a nudity judge on another concept."""

    warnings = []
    if settings["judge"]:
        warnings.append(judge_warning(settings["judge"], settings["concept"]))
    if forget_images is not None:
        captions = [image.caption for image in forget_images if image.caption is not None]
        if captions:
            warnings.append(unnamed_concept_warning(captions, train.concept_words, "forget image captions"))
    if forget_images is not None and retain_images is not None:
        if [i.sha256 for i in forget_images] == [i.sha256 for i in retain_images]:
            warnings.append("the forget and retain images are the same files: training would push the model away "
                            "from and towards the same pictures; give different --retain-images.")
    tokenizer = clip_tokenizer("sd1")  # every family shares this BPE; only the pad token differs
    limit = tokenizer.model_max_length
    for side, prompts in (("forget", train.forget_prompts), ("retain", train.retain_prompts)):
        counts = [len(ids) for ids in tokenizer(list(prompts), verbose=False)["input_ids"]]
        warnings.append(long_prompt_warning(prompts, counts, limit, f"{side} prompts"))
    return [warning for warning in warnings if warning]


def run_unlearn(settings: Mapping, log: Callable[[str], None] = lambda message: None,
                should_stop: Callable[[], bool] | None = None,
                on_phase: Callable[[str], None] = lambda phase: None,
                callbacks: Sequence[Callable[[dict], None]] = (),
                preview_every: int = 0,
                on_preview: Callable[[int, dict], None] | None = None,
                on_sampled: Callable[[int, int], None] | None = None) -> dict:
    """Unlearn ``settings["concept"]`` from the checkpoint and write the edited checkpoint and its JSON report.

    Everything that can be checked without the model is checked first, so bad settings fail in a second.
    ``on_phase`` hears "load", "data", "train" and "write" as the run enters each; ``should_stop()`` is asked
    before every training step, and when it turns true the run saves its resumable state and raises
    ``UnlearningCancelled`` with how to resume; while the data are sampled it is asked after every batch (nothing
    is written then). ``on_sampled(done, total)`` follows the sampling, in prompts. ``callbacks`` hear every step's record (losses, cosine, conflict).
    With ``preview_every`` N > 0, ``on_preview(step, images)`` receives same-noise samples of the first forget and
    retain prompt (``images["forget"]``, ``images["retain"]``: (H, W, 3) uint8) before training (step 0), every N
    steps and after the last; their time and UNet evaluations are the report's "preview" phase, not "training".
    Returns the report that was written to ``<name>.json``.
    """

    checkpoint = Path(settings["checkpoint"])
    if checkpoint.is_dir():
        raise RGDInputError(f"--checkpoint {checkpoint} is a folder; rgd unlearn takes a single-file checkpoint "
                            "(.safetensors).")
    if not checkpoint.is_file():
        raise RGDInputError(f"--checkpoint {checkpoint} does not exist.")
    device = resolve_device(settings["device"])
    check_bf16(device, settings["precision"])
    variant = _flow_variant_or_none(checkpoint)
    if settings["stop_ratio"] is None:  # the family's target, resolved once: the resume file and report hold it
        settings = {**settings, "stop_ratio": default_stop_ratio(flow=variant is not None)}
    config = _unlearn_config(settings)
    sampling = {key: settings[key] if settings[key] is not None else default
                for key, default in sampling_defaults(variant).items()}
    sampler = SamplerSettings(steps=sampling["sample_steps"], guidance_scale=sampling["guidance"],
                              scheduler=sampling["sampler"], height=settings["height"], width=settings["width"],
                              trajectory_points=settings["trajectory_points"],
                              retain_guidance_scale=settings["retain_guidance"], precision=settings["precision"])
    if variant is not None:
        _check_flow_settings(settings, sampler)
    elif settings["lora_format"] == "diffusers":
        raise RGDInputError("--lora-format diffusers is for Flux.1 and SD3.x files; an SD checkpoint's kohya LoRA "
                            "already loads in A1111, Forge, ComfyUI and diffusers.")
    plan = output_plan(settings)
    check_outputs(settings, plan)
    forget_images, retain_images = user_images(settings)
    train, test, prompt_preset = build_prompts(settings)
    for warning in input_warnings(settings, train, forget_images, retain_images):
        log(f"rgd: warning: {warning}")
    concepts = len(set(train.pair_concepts))
    # decided here, so that the log and the file's metadata say it
    config = forget_objective_for(config, concepts, judged=bool(settings["judge"]))
    if concepts > 1:
        log(f"{concepts} concepts: forget objective {objective_name(config.forget_per_concept)} (--forget-objective "
            f"{settings['forget_objective']})")
    judge_parts = _judge_parts(settings, test, device)

    on_phase("load")
    log(f"loading {checkpoint.name}")
    components, folder = load_components(settings["checkpoint"], settings["family"], settings["config_folder"],
                                         settings["cache_dir"], settings["allow_pickle"],
                                         settings["text_encoders"] or ())
    move_components(components, device)
    judge = None
    if judge_parts is not None:
        probe, shown = judge_parts
        judge = image_judge(_judge_sampler(components, sampler, settings["seed"]), probe, shown)
        held_out = "" if test is train else "held-out "
        log(f"the {settings['judge']} judge decides the stop: {len(probe.forget_prompts)} {held_out}probe images every "
            f"{settings['stop_every']} steps, target at most {settings['stop_share']:.1%} showing each concept")
    recipe = RecipeSettings(config, settings["scope"], settings["batch_size"], settings["lora_rank"],
                            data_seed=settings["seed"])
    # only the pairs training will draw are sampled (user images are all used as given), and with the adaptive stop
    # only those of the first steps now: the rest as training goes (the host's before_step), so a run that stops
    # early never samples the pairs of the steps it did not run
    rows = (training_rows(recipe, len(train), len(train), steps_to_sample(0, config, judge is not None))
            if forget_images is None and retain_images is None else None)
    plan_text = _data_plan(train, forget_images, retain_images, rows, config, judge is not None)
    log(f"{components.variant or components.family} checkpoint on {device}; {plan_text}")
    on_phase("data")
    phases: dict = {}
    if judge is not None and not settings["resume"]:  # a judge that sees no concept in the base model is no judge
        with phase(phases, "judge", components.denoiser):
            base_shares = judge(components.denoiser)
        log(f"the judge on the base model: {_shares_text(base_shares)} of its probe show the concept")
        warning = base_probe_warning(settings["judge"], base_shares, settings["stop_share"])
        if warning:
            log(f"rgd: warning: {warning}")
    with phase(phases, "data", components.denoiser):  # zero evaluations when the data come from the cache
        data = build_paired_data(components, train, None, sampler, settings["seed"], _data_cache(settings),
                                 forget_images=forget_images, retain_images=retain_images,
                                 on_sampled=_sampling_watch(should_stop, on_sampled), rows=rows)
    log(f"data: {phases['data']['seconds']:.1f} s, {phases['data']['evaluations']} UNet evaluations")
    previews = _Previews(components, train, sampler, settings["seed"], preview_every, on_preview, phases)
    previews.take(0, components.denoiser)
    if not settings["resume"]:
        plan.resume_state.unlink(missing_ok=True)  # an old run's state (--overwrite was given to get here)
        atomic_write_bytes((json.dumps(_jsonable(dict(settings)), indent=2) + "\n").encode("utf-8"),
                           plan.resume_settings)
    try:
        report = _train_and_write({**settings, **sampling}, plan, components, folder, train, test, prompt_preset,
                                  recipe, sampler, data, forget_images, retain_images, should_stop, on_phase, log, phases,
                                  list(callbacks), previews, judge)
    except BaseException as error:
        if not plan.resume_state.exists():  # nothing was saved to resume from: the settings file alone is noise
            plan.resume_settings.unlink(missing_ok=True)
        elif not isinstance(error, (UnlearningCancelled, KeyboardInterrupt)):
            log(f"rgd: the last saved training state is in {plan.resume_state}; once the cause is fixed, run the "
                "same command with --resume to go on from there.")
        raise
    # Finished: the resumable state has served its purpose.
    plan.resume_state.unlink(missing_ok=True)
    plan.resume_settings.unlink(missing_ok=True)
    return report


def _train_and_write(settings, plan, components, folder, train, test, prompt_preset, recipe, sampler, data,
                     forget_images, retain_images, should_stop, on_phase, log, phases, callbacks, previews,
                     judge) -> dict:
    checkpoint = Path(settings["checkpoint"])
    config = recipe.config
    on_phase("train")
    log(f"training {config.steps} steps" + (" (resuming)" if settings["resume"] else ""))
    try:
        unet, records = unlearn_sd(
            components, train, config=config, scope=settings["scope"], batch_size=settings["batch_size"],
            data=data, sampler=sampler, data_seed=settings["seed"], cache_dir=_data_cache(settings),
            callbacks=[progress_bar(config.steps, f"rgd {settings['method']}"), *callbacks,
                                  previews.after_step],
            should_stop=should_stop, lora_rank=settings["lora_rank"], checkpoint_path=plan.resume_state,
            checkpoint_every=settings["checkpoint_every"],
            resume_from=plan.resume_state if settings["resume"] else None, phases=phases, watch=previews.watch,
            precision=settings["precision"], gradient_checkpointing=settings["gradient_checkpointing"], judge=judge,
        )
        previews.finish(unet)
    except UnlearningCancelled as stopped:
        raise UnlearningCancelled(f"{stopped}; the state is saved in {plan.resume_state}: run the same command with "
                                  "--resume to continue.") from None
    on_phase("write")

    resolved = {**settings, "prompt_preset": prompt_preset, "family": components.variant or components.family,
                "config_folder": str(folder) if folder is not None else None, "checkpoint": str(checkpoint),
                "out": str(settings["out"])}
    metadata = run_metadata(train.concept, prompt_preset, train.digest(), train.forget_prompts,
                            train.retain_prompts, recipe, asdict(sampler), records, "diffusers")
    images = {}
    for side, found in (("forget", forget_images), ("retain", retain_images)):
        if found is not None:
            metadata[f"rgd_{side}_images"] = len(found)
            metadata[f"rgd_{side}_images_sha256"] = images_digest(found)
            images[side] = {"folder": str(settings[f"{side}_images"]), "count": len(found),
                            "sha256": images_digest(found), "captions": sum(i.caption is not None for i in found)}
    report = {
        "settings": resolved,
        "prompt_digests": {"train": train.digest(), "test": test.digest()},
        "summary": summarize(records),
        # what the user waited for, per phase: seconds and UNet evaluations (one per sample through the UNet)
        "phases": phases,
        "output": str((plan.model_file or plan.diffusers_folder or plan.lora or plan.diff).resolve()),
    }
    if images:
        report["images"] = images
    if plan.diffusers_folder is not None:
        report["diffusers_folder"] = str(plan.diffusers_folder)
    # The diffusers -> original key map of this checkpoint, traced once for every file written below.
    shapes = read_key_shapes(checkpoint, allow_pickle=settings["allow_pickle"])
    key_map = unet_key_map(shapes, components.denoiser.config)
    written = []
    try:
        if plan.lora is not None:
            report["lora"] = str(_save_lora(unet, plan.lora, key_map, metadata, settings["lora_format"]).resolve())
            written.append(plan.lora)
            unet = _merged(unet)
        if plan.diff is not None:
            report["diff"] = str(_save_diff(components.denoiser, unet, plan.diff, key_map, shapes, metadata).resolve())
            written.append(plan.diff)
        if plan.model_file is not None:
            export_single_file(checkpoint, unet, plan.model_file, config_folder=folder, metadata=metadata,
                               allow_pickle=settings["allow_pickle"], key_map=key_map)
            written.append(plan.model_file)
        if plan.diffusers_folder is not None:
            export_diffusers_folder(components, unet, plan.diffusers_folder, metadata,
                                    overwrite=settings["overwrite"])
            written.append(plan.diffusers_folder)
        atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode("utf-8"), plan.report)
    except BaseException:
        # A checkpoint or LoRA without its report would look like a finished run; keep all of them or nothing.
        for path in written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return report


def _judge_parts(settings: Mapping, test, device) -> tuple | None:
    """(probe, test of each image) of ``--judge``, or None without one. Loaded before the checkpoint, so that a bad
    judge model fails in seconds. The probe is the held-out test set's, except with the user's own prompt lists,
    whose test set is the training set."""
    if not settings["judge"]:
        return None
    probe = judge_probe(test, settings["judge_prompts"])
    return probe, judge_test(settings["judge"], probe, settings["judge_clip"], str(device))


def _shares_text(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{share:.0%}" + (f" ({concept})" if len(shares) > 1 else "") for concept, share in shares.items())


def _judge_sampler(components, sampler: SamplerSettings, seed: int):
    """``sample(model, prompts)`` for the judge: the model being trained draws with the data's sampler (images
    only, no trajectory points), from noise of its own stream (``seed + 1``: the probe prompts never start from a
    training image's noise)."""
    images_only = replace(sampler, trajectory_points=0)

    def sample(model, prompts):
        return generate_images(replace(components, unet=model), prompts, seed + 1, images_only)

    return sample


def _flow_variant_or_none(checkpoint: Path) -> str | None:
    """The flow variant of the checkpoint, or None for SD files, pickles (Flux and SD3 come as safetensors; a pickle
    is not unpickled here) and files whose header cannot be read (their error comes later, in its usual place)."""
    if checkpoint.suffix.lower() in PICKLE_SUFFIXES:
        return None
    try:
        return flow_variant(checkpoint)
    except RGDInputError:
        return None


def _check_flow_settings(settings: Mapping, sampler: SamplerSettings) -> None:
    """What a Flux.1 / SD3.x run cannot do, refused before anything loads."""
    if sampler.scheduler not in ("euler", "ddim"):
        raise RGDInputError(f"Flux.1 and SD3.x sample with euler, not {sampler.scheduler!r}; pass --sampler euler "
                            "(the fast preset's dpm++2m is for SD models).")
    for side in ("forget_images", "retain_images"):
        if settings[side]:
            raise RGDInputError(f"{option_flag(side)} needs the model's VAE, which rgd does not load for Flux.1 and "
                                "SD3.x; let the model sample its own data.")
    if settings["judge"]:
        raise RGDInputError("--judge looks at decoded images and needs the model's VAE, which rgd does not load for "
                            "Flux.1 and SD3.x; let --stop-ratio decide the stop.")
    if settings["format"] in ("diffusers", "both"):
        raise RGDInputError("Flux.1 and SD3.x runs write single files (the original layout ComfyUI and Forge load); "
                            "pass --format single-file or none.")
    if settings["lora_format"] == "diffusers" and settings["scope"] != "lora":
        raise RGDInputError("--lora-format is for --scope lora.")
    for size in (sampler.height, sampler.width):
        if size is not None and size % 16:
            raise RGDInputError(f"Flux.1 and SD3.x take sizes in multiples of 16 pixels, not {size}.")


def _sampling_watch(should_stop, on_sampled):
    """The data phase's per-batch hook: report progress, and stop (nothing written yet) when asked to."""

    def watch(done: int, total: int) -> None:
        if on_sampled is not None:
            on_sampled(done, total)
        if should_stop is not None and done < total and should_stop():
            raise UnlearningCancelled(f"stopped while sampling the training data ({done} of {total} prompts); "
                                      "nothing was written")

    return watch


class _Previews:
    """Same-noise samples of the first forget and retain prompt while a run trains (``run_unlearn``'s
    ``preview_every``): step 0 from the base model, then every N steps and after the last from the module being
    trained. Their seconds and evaluations go to the "preview" phase and are taken out of "training"."""

    def __init__(self, components, train, sampler, seed: int, every: int, on_preview, phases: dict) -> None:
        self.components, self.every, self.on_preview, self.phases = components, every, on_preview, phases
        self.prompts = [train.forget_prompts[0], train.retain_prompts[0]]
        self.sampler, self.seed = replace(sampler, batch_size=2), seed
        self.module = None
        self.last_step = -1
        self.steps_done = 0

    @property
    def active(self) -> bool:
        # previews decode images: a flow model loaded without its VAE has none to show
        return self.every > 0 and self.on_preview is not None and self.components.vae is not None

    def watch(self, module) -> None:
        self.module = module

    def take(self, step: int, unet, in_training: bool = False) -> None:
        if not self.active or step == self.last_step:
            return
        spent: dict = {}
        with phase(spent, "preview", unet):
            images = generate_images(replace(self.components, unet=unet), self.prompts, self.seed, self.sampler)
        add_phases(self.phases, spent)
        if in_training:  # the training phase's clock and hook saw the preview too
            add_phases(self.phases, {"training": {key: -value for key, value in spent["preview"].items()}})
        self.last_step = step
        self.on_preview(step, {"forget": images[0], "retain": images[1], "prompts": list(self.prompts)})

    def after_step(self, record: dict) -> None:
        self.steps_done = record["step"] + 1
        if self.active and self.steps_done % self.every == 0 and self.module is not None:
            self.take(self.steps_done, self.module, in_training=True)

    def finish(self, unet) -> None:
        """The trained model's preview after the last step (unless that step's preview was just taken)."""
        if self.module is not None:
            self.take(self.steps_done, unet)


def user_images(settings: Mapping) -> tuple[list | None, list | None]:
    """The forget and retain images the settings name (None: that side is sampled), checked before any model
    loads: readable files, and as many on both sides when both are given, since training pairs image i with i."""

    found = {side: find_images(settings[f"{side}_images"], side) if settings[f"{side}_images"] else None
             for side in ("forget", "retain")}
    forget, retain = found["forget"], found["retain"]
    if (forget is not None or retain is not None) and settings.get("trajectory_points"):
        raise RGDInputError("--trajectory-points keeps latents of sampled images; user images have none. Drop "
                            "--trajectory-points or the image folders.")
    if forget is not None and retain is not None and len(forget) != len(retain):
        raise RGDInputError(
            f"paired training needs as many forget as retain images: {settings['forget_images']} holds "
            f"{len(forget)}, {settings['retain_images']} holds {len(retain)}; add or remove images to match."
        )
    return forget, retain


def _data_plan(train, forget_images, retain_images, rows, config, judged: bool) -> str:
    """What the training data will be made of, and how long training goes, for the log."""
    adaptive = bool(config.stop_ratio) or judged
    if adaptive:
        steps = f"up to {config.steps} steps (stopping once the concept is gone)"
    else:
        steps = f"{config.steps} steps"
    if forget_images is None and retain_images is None:
        if rows is None or len(rows) == len(train):
            return f"sampling {len(train)} prompt pairs, then {steps}"
        if adaptive and config.steps > steps_to_sample(0, config, judged):
            return (f"sampling the {len(rows)} pairs (of {len(train)}) the first steps draw, then {steps}, "
                    f"sampling the pairs of the next {config.stop_every} steps as it goes")
        return f"sampling {len(rows)} of {len(train)} prompt pairs (the ones training draws), then {steps}"
    count = len(forget_images if forget_images is not None else retain_images)
    sides = [f"{count} {side} images" if images is not None else f"{count} sampled {side} examples"
             for side, images in (("forget", forget_images), ("retain", retain_images))]
    return " and ".join(sides) + f", then {steps}"


def _save_lora(unet, path: Path, key_map: Mapping, metadata: Mapping, lora_format: str = "kohya") -> Path:
    """The trained LoRA as a kohya-format file (lora_unet_* keys of the checkpoint's own layout)."""

    if lora_format == "diffusers":
        return save_diffusers_lora(path, lora_modules(unet), metadata)
    return save_kohya_lora(path, lora_modules(unet), key_map, metadata={k: str(v) for k, v in metadata.items()})


def _save_diff(base_unet, edited_unet, path: Path, key_map: Mapping, shapes: Mapping, metadata: Mapping) -> Path:
    """The cross-attention edit as a difference file (``edited - base`` of the changed tensors, original-layout
    keys): ~5% of a full checkpoint, to add to the base or share."""

    return export_unet_diff(base_unet.state_dict(), edited_unet.state_dict(), path, key_map, shapes,
                            {k: str(v) for k, v in metadata.items()})


def _merged(unet):
    return merge_lora(unet)

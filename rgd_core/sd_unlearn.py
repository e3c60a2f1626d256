"""Headless concept unlearning of a single-file Stable Diffusion checkpoint: what ``rgd unlearn`` runs.

Settings are resolved in layers, each overriding the one before:

    built-in defaults  <  --preset values  <  TOML file (--config)  <  explicit command-line flags

TOML keys are the long option names with underscores (``retain_weight = 1.6``); an unknown key is an error, so a
typo never silently falls back to a default. The run loads the checkpoint offline, builds the concept's prompt
pairs, samples the paired data and trains (``unlearn_sd``), then writes ``<out>/<name>.safetensors`` and
``<out>/<name>.json``. Both files are written only after training finished, each atomically, so an interrupted or
failed run leaves nothing in ``out``.

``format`` picks the model output: the single file (default), a diffusers folder ``<out>/<name>/`` (built aside and
renamed into place; an existing one is replaced only with ``overwrite``), or both. ``forget_images`` /
``retain_images`` name folders of the user's own images, which replace the base model's samples on that side.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Callable, Mapping

from .backends.diffusers_sd import LORA_SCOPE, SCOPES
from .checkpoints.configs import FAMILIES as CLI_FAMILIES
from .checkpoints.export import EXPORT_FORMATS
from .errors import RGDInputError
from .losses import TRUNCATION_MODES as TRUNCATIONS
from .prompts import PRESET_NAMES
from .update_rules import UPDATE_RULES

METHODS = tuple(UPDATE_RULES)
# custom needs a template file; shapes is the benchmark world's vocabulary, not a Stable Diffusion one
PROMPT_PRESETS = tuple(name for name in PRESET_NAMES if name not in ("custom", "shapes"))
# Concepts for which the paper's nudity prompt preset is the natural default; anything else gets "object".
NUDITY_CONCEPTS = {"nudity", "nude", "naked", "nsfw", "bare", "unclad", "undressed", "nakedness"}
# "lora" trains LoRA layers only; the run then writes the kohya LoRA file and the checkpoint with it merged.
ALL_SCOPES = SCOPES + (LORA_SCOPE,)

# Held-out test prompts are only built to record their digest (for a later evaluation); strings are cheap.
TEST_PROMPTS = 100

# Built-in defaults: the paper's only Stable Diffusion run (lambda 1.6, no ascent above m = 1.1, Adam 1e-5, 100
# steps of 8 + 8, full UNet; the paper-nudity-sd14 preset pins the same values should these defaults change) and
# SD's usual sampler (50 DDIM steps at guidance 7.5). None means "decided later" (family: from the file's keys;
# prompt_preset: from the concept; name: from the checkpoint and concept).
DEFAULTS: dict = {
    "checkpoint": None,
    "concept": None,
    "out": None,
    "preset": None,
    "prompt_preset": None,
    "family": None,
    "config_folder": None,
    "method": "rgd",
    "scope": "full",
    "lora_rank": 4,
    "steps": 100,
    "lr": 1e-5,
    "retain_weight": 1.6,
    "truncation": "skip",
    "truncation_threshold": 1.1,
    "batch_size": 8,
    "train_prompts": 800,
    "sample_steps": 50,
    "guidance": 7.5,
    "seed": 0,
    "cache_dir": None,
    "name": None,
    "allow_pickle": False,
    "format": "single-file",
    "overwrite": False,
    "forget_images": None,
    "retain_images": None,
}

# Type each setting must have once resolved (TOML values are checked against it; ints are accepted as floats).
_TYPES = {
    "steps": int, "lora_rank": int, "batch_size": int, "train_prompts": int, "sample_steps": int, "seed": int,
    "lr": float, "retain_weight": float, "truncation_threshold": float, "guidance": float,
    "allow_pickle": bool, "overwrite": bool,
}


def _paper_preset() -> dict:
    from .backends.diffusers_sd import PAPER_NUDITY_SD14

    keys = ("method", "retain_weight", "truncation", "truncation_threshold", "lr", "steps", "batch_size", "scope")
    return {key: PAPER_NUDITY_SD14[key] for key in keys}


PRESETS: dict[str, Callable[[], dict]] = {"paper-nudity-sd14": _paper_preset}


# --- resolving settings ------------------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict:
    """The settings in a TOML file, checked: known keys only, values of the right type."""
    path = Path(path)
    if not path.is_file():
        raise RGDInputError(f"config file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RGDInputError(f"config file {path} is not valid TOML ({error}).") from None
    for key, value in data.items():
        if key not in DEFAULTS:
            raise RGDInputError(f"config file {path}: unknown key {key!r}; keys are the long option names "
                                "with underscores, e.g. retain_weight.")
        data[key] = _check_type(key, value, path)
    return data


def _check_type(key: str, value, path: Path):
    wanted = _TYPES.get(key, str)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int, so "steps = true" must be refused explicitly.
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise RGDInputError(f"config file {path}: {key} must be a {wanted.__name__}, not {value!r}.")
    return value


def resolve_settings(cli: Mapping, toml_path: str | Path | None = None) -> dict:
    """Merge defaults, preset, TOML file and the flags given on the command line (``None`` = not given)."""
    given = {key: value for key, value in cli.items() if key in DEFAULTS and value is not None}
    from_file = read_toml(toml_path) if toml_path else {}
    preset = given.get("preset", from_file.get("preset"))
    if preset is not None and preset not in PRESETS:
        raise RGDInputError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}.")
    settings = {**DEFAULTS, **(PRESETS[preset]() if preset else {}), **from_file, **given}
    _check_settings(settings)
    return settings


def _check_settings(settings: dict) -> None:
    for key in ("checkpoint", "concept", "out"):
        if not settings[key]:
            raise RGDInputError(f"--{key} is required (on the command line or in the --config file).")
    choices = {"method": METHODS, "truncation": TRUNCATIONS, "family": CLI_FAMILIES,
               "prompt_preset": PROMPT_PRESETS, "format": EXPORT_FORMATS}
    for key, allowed in choices.items():
        if settings[key] is not None and settings[key] not in allowed:
            raise RGDInputError(f"{key} must be one of {', '.join(allowed)}, not {settings[key]!r}.")
    if settings["scope"] not in ALL_SCOPES:
        raise RGDInputError(f"scope must be one of {', '.join(ALL_SCOPES)}, not {settings['scope']!r}.")
    for key in ("batch_size", "train_prompts", "sample_steps", "lora_rank"):
        if settings[key] < 1:
            raise RGDInputError(f"{key} must be at least 1, not {settings[key]}.")


def default_prompt_preset(concept: str) -> str:
    """"nudity" for nudity-like concepts (the paper's prompt files), else "object" (the most generic templates)."""
    return "nudity" if concept.strip().lower() in NUDITY_CONCEPTS else "object"


def concept_slug(concept: str) -> str:
    """A file-name-safe form of the concept: lowercase words joined by dashes ("Van Gogh" -> "van-gogh")."""
    return re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-") or "concept"


def output_name(settings: Mapping) -> str:
    return settings["name"] or f"{Path(settings['checkpoint']).stem}-rgd-{concept_slug(settings['concept'])}"


# --- the run -----------------------------------------------------------------------------------------------------


def _unlearn_config(settings: Mapping):
    from .unlearner import UnlearnConfig

    # None keeps the Unlearner's own default (+inf), which TOML and JSON cannot spell portably.
    threshold = settings["truncation_threshold"]
    extra = {} if threshold is None else {"truncation_threshold": threshold}
    return UnlearnConfig(method=settings["method"], steps=settings["steps"], lr=settings["lr"],
                         retain_weight=settings["retain_weight"], truncation=settings["truncation"],
                         seed=settings["seed"], **extra)


def load_components(settings: Mapping):
    """Components and the config folder they were loaded with. The family comes from the file's keys; only
    ``--family sd2-v`` adds something keys cannot tell (v-prediction), by picking the sd2-v configs."""
    from .checkpoints.configs import config_folder
    from .checkpoints.load import detect_family, load_pipeline_components, read_key_shapes

    shapes = read_key_shapes(settings["checkpoint"], settings["allow_pickle"])
    found = detect_family(shapes, shapes)
    wanted = settings["family"]
    if wanted is not None and wanted.removesuffix("-v") != found:
        raise RGDInputError(f"{Path(settings['checkpoint']).name} is an {found} checkpoint by its keys, "
                            f"not {wanted}.")
    folder = settings["config_folder"] or config_folder(wanted or found, settings["cache_dir"])
    prediction = "v_prediction" if wanted == "sd2-v" else None
    components = load_pipeline_components(settings["checkpoint"], folder, found, prediction,
                                          settings["allow_pickle"])
    return components, folder


def _data_cache(settings: Mapping) -> Path:
    """Where sampled training data are kept: sampling is most of a run's time, and reruns that change only the
    training hyper-parameters reuse it (the cache key covers model, prompts, sampler and seed)."""
    from .checkpoints.configs import default_cache_dir

    return Path(settings["cache_dir"] or default_cache_dir()) / "sd_data"


def run_unlearn(settings: Mapping, log: Callable[[str], None] = lambda message: None) -> dict:
    """Unlearn ``settings["concept"]`` from the checkpoint and write the edited checkpoint and its JSON report.

    Everything that can be checked without the model is checked first, so bad settings fail in a second.
    Returns the report that was written to ``<name>.json``.
    """
    from .backends.diffusers_sd import SamplerSettings, unlearn_sd
    from .checkpoints.export import (
        check_folder_target,
        export_diffusers_folder,
        export_single_file,
        safe_output_folder,
        safe_output_path,
    )
    from .image_data import images_digest
    from .io import atomic_write_bytes
    from .progress import progress_bar
    from .prompts import build_prompt_sets
    from .unlearner import summarize

    checkpoint = Path(settings["checkpoint"])
    if not checkpoint.exists():
        raise RGDInputError(f"checkpoint {checkpoint} does not exist.")
    config = _unlearn_config(settings)
    sampler = SamplerSettings(steps=settings["sample_steps"], guidance_scale=settings["guidance"])
    out_path = safe_output_path(settings["out"], output_name(settings))
    report_path = out_path.with_suffix(".json")
    single_file = settings["format"] in ("single-file", "both")
    diffusers_folder = None
    if settings["format"] in ("diffusers", "both"):
        diffusers_folder = check_folder_target(safe_output_folder(settings["out"], output_name(settings)),
                                               settings["overwrite"])
    forget_images, retain_images = user_images(settings)
    prompt_preset = settings["prompt_preset"] or default_prompt_preset(settings["concept"])
    train, test = build_prompt_sets(settings["concept"], prompt_preset, settings["train_prompts"],
                                    TEST_PROMPTS, settings["seed"])

    log(f"loading {checkpoint.name}")
    components, folder = load_components(settings)
    log(f"{components.family} checkpoint; {_data_plan(train, forget_images, retain_images)}, then {config.steps} steps")
    unet, records = unlearn_sd(
        components, train, config=config, scope=settings["scope"], batch_size=settings["batch_size"],
        sampler=sampler, data_seed=settings["seed"], cache_dir=_data_cache(settings),
        callbacks=[progress_bar(config.steps, f"rgd {settings['method']}")], lora_rank=settings["lora_rank"],
        forget_images=forget_images, retain_images=retain_images,
    )

    resolved = {**settings, "prompt_preset": prompt_preset, "family": components.family,
                "config_folder": str(folder), "checkpoint": str(checkpoint), "out": str(settings["out"])}
    metadata = {
        "rgd_method": config.method, "rgd_concept": train.concept, "rgd_prompt_preset": prompt_preset,
        "rgd_prompt_digest": train.digest(), "rgd_scope": settings["scope"], "rgd_steps": config.steps,
        "rgd_lr": config.lr, "rgd_retain_weight": config.retain_weight, "rgd_truncation": config.truncation,
        "rgd_truncation_threshold": config.truncation_threshold, "rgd_batch_size": settings["batch_size"],
        "rgd_seed": config.seed, "rgd_train_prompts": len(train),
    }
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
        "output": str(out_path if single_file else diffusers_folder),
    }
    if images:
        report["images"] = images
    if diffusers_folder is not None:
        report["diffusers_folder"] = str(diffusers_folder)
    written = []
    try:
        if settings["scope"] == "lora":
            report["lora"] = str(_save_lora(unet, checkpoint, settings, metadata))
            written.append(Path(report["lora"]))
            unet = _merged(unet)
        if settings["scope"] == "cross-attn":
            report["diff"] = str(_save_diff(components.unet, unet, checkpoint, settings, metadata))
            written.append(Path(report["diff"]))
        if single_file:
            export_single_file(checkpoint, unet, out_path, config_folder=folder, metadata=metadata,
                               allow_pickle=settings["allow_pickle"])
            written.append(out_path)
        if diffusers_folder is not None:
            export_diffusers_folder(components, unet, diffusers_folder, metadata, overwrite=settings["overwrite"])
            written.append(diffusers_folder)
        atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode("utf-8"), report_path)
    except BaseException:
        # A checkpoint or LoRA without its report would look like a finished run; keep all of them or nothing.
        for path in written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return report


def user_images(settings: Mapping) -> tuple[list | None, list | None]:
    """The forget and retain images the settings name (None: that side is sampled), checked before any model
    loads: readable files, and as many on both sides when both are given, since training pairs image i with i."""
    from .image_data import find_images

    found = {side: find_images(settings[f"{side}_images"], side) if settings[f"{side}_images"] else None
             for side in ("forget", "retain")}
    forget, retain = found["forget"], found["retain"]
    if forget is not None and retain is not None and len(forget) != len(retain):
        raise RGDInputError(
            f"paired training needs as many forget as retain images: {settings['forget_images']} holds "
            f"{len(forget)}, {settings['retain_images']} holds {len(retain)}; add or remove images to match."
        )
    return forget, retain


def _data_plan(train, forget_images, retain_images) -> str:
    """What the training data will be made of, for the log."""
    if forget_images is None and retain_images is None:
        return f"sampling {len(train)} prompt pairs"
    count = len(forget_images if forget_images is not None else retain_images)
    sides = [f"{count} {side} images" if images is not None else f"{count} sampled {side} examples"
             for side, images in (("forget", forget_images), ("retain", retain_images))]
    return " and ".join(sides)


def _save_lora(unet, checkpoint: Path, settings: Mapping, metadata: Mapping) -> Path:
    """The trained LoRA as a kohya-format file (lora_unet_* keys of the checkpoint's own layout)."""
    from .checkpoints.export import safe_output_path, unet_key_map
    from .checkpoints.load import read_key_shapes
    from .lora import lora_modules, save_kohya_lora

    key_map = unet_key_map(read_key_shapes(checkpoint, allow_pickle=settings["allow_pickle"]), unet.config)
    path = safe_output_path(settings["out"], output_name(settings) + "-lora")
    return save_kohya_lora(path, lora_modules(unet), key_map, metadata={k: str(v) for k, v in metadata.items()})


def _save_diff(base_unet, edited_unet, checkpoint: Path, settings: Mapping, metadata: Mapping) -> Path:
    """The cross-attention edit as a difference file (``edited - base`` of the changed tensors, original-layout
    keys): ~5% of a full checkpoint, to add to the base or share."""
    from .checkpoints.export import export_unet_diff, safe_output_path, unet_key_map
    from .checkpoints.load import read_key_shapes

    shapes = read_key_shapes(checkpoint, allow_pickle=settings["allow_pickle"])
    path = safe_output_path(settings["out"], output_name(settings) + "-diff")
    return export_unet_diff(base_unet.state_dict(), edited_unet.state_dict(), path, unet_key_map(shapes,
                            edited_unet.config), shapes, {k: str(v) for k, v in metadata.items()})


def _merged(unet):
    from .lora import merge_lora

    return merge_lora(unet)

"""The tab's form and the one translation from it to ``rgd unlearn``'s settings.

Every field of ``TabForm`` is one input of the page, in the order Gradio hands their values over (the /rgd_unlearn
API's positions, so new fields go last); its defaults are the command line's, except the
scope (LoRA: what a UI user can try at once and undo by not loading it). ``settings_for`` fills in where the host
keeps models and checks everything through ``resolve_settings``, so the tab refuses exactly what the command line
refuses, with the same one-line messages.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, Sequence

from rgd_core.apps.unlearn import (
    CLI_FAMILIES,
    DEFAULTS,
    SD_SAMPLING,
    default_prompt_preset,
    output_name,
    resolve_settings,
)
from rgd_core.edits.scopes import LORA_SCOPE
from rgd_core.errors import RGDInputError
from rgd_core.evaluate.judges import NO_JUDGE
from rgd_core.files import atomic_write_bytes
from rgd_core.method.unlearner import STOP_RATIO
from rgd_core.prompts import HOST_PRESETS, LISTS_PRESET, prompt_lines, prompt_sets_from_inputs

AUTO_PRESET = "auto"  # nudity for nudity-like concepts, else object: the command line's rule
PROMPT_PRESET_CHOICES = (AUTO_PRESET, *HOST_PRESETS)
AUTO_FAMILY = "auto"  # from the checkpoint's keys
FAMILY_CHOICES = (AUTO_FAMILY, *CLI_FAMILIES)
PAIRS_SHOWN = 4


@dataclass
class TabForm:
    """What the user set on the page (labels and help live in ``blocks``)."""

    checkpoint: str = ""
    concept: str = ""
    prompt_preset: str = AUTO_PRESET
    synonyms: str = ""
    custom_template: str = ""
    slots: str = ""  # one slot a line: "place: in a park, at the beach"
    forget_list: str = ""  # "my lists": one forget prompt a line
    retain_list: str = ""  # and its retain twin on the same line number
    neighbours: str = ""  # comma-separated concepts that must stay ("": the preset's own list)
    neighbour_share: float = DEFAULTS["neighbour_share"]
    stop_ratio: float = STOP_RATIO  # SD's target; left at it, a Flux.1 / SD3.x file takes its own (settings_for)
    method: str = DEFAULTS["method"]
    scope: str = LORA_SCOPE
    steps: int = DEFAULTS["steps"]
    retain_weight: float = DEFAULTS["retain_weight"]
    truncation_threshold: float = DEFAULTS["truncation_threshold"]
    lr: float = DEFAULTS["lr"]
    batch_size: int = DEFAULTS["batch_size"]
    seed: int = DEFAULTS["seed"]
    lora_rank: int = DEFAULTS["lora_rank"]
    train_prompts: int = DEFAULTS["train_prompts"]
    sample_steps: int = SD_SAMPLING["sample_steps"]  # the tab edits SD checkpoints
    guidance: float = SD_SAMPLING["guidance"]
    sampler: str = SD_SAMPLING["sampler"]
    precision: str = DEFAULTS["precision"]  # "bf16": bfloat16 autocast, for GPUs that have it
    gradient_checkpointing: bool = DEFAULTS["gradient_checkpointing"]  # less memory, more training time
    name: str = ""
    save_checkpoint: bool = True
    save_lora: bool = True
    overwrite: bool = False
    resume: bool = False
    preview_every: int = 0
    family: str = "auto"  # or one of CLI_FAMILIES: only sd2-v (SD 2.x 768-v) is something the keys cannot tell
    config_folder: str = ""  # a diffusers config folder for a checkpoint of unusual shape ("": the shipped one)
    # added later, so last: the values' order is the /rgd_unlearn API's, which scripts call with positions
    judge: str = NO_JUDGE  # or one of JUDGES: the model's probe images decide the stop instead of the loss ratio
    judge_clip: str = ""  # the CLIP folder of the clip judge
    stop_share: float = DEFAULTS["stop_share"]
    forget_objective: str = DEFAULTS["forget_objective"]  # several concepts: FORGET_OBJECTIVES


FORM_FIELDS = tuple(field.name for field in fields(TabForm))
_INTEGERS = {field.name for field in fields(TabForm) if field.type == "int"}


def form_from_values(values: Sequence) -> TabForm:
    """A form from the page's input values, in ``FORM_FIELDS`` order (how Gradio hands them to a handler)."""
    if len(values) != len(FORM_FIELDS):
        raise ValueError(f"the tab sent {len(values)} values for {len(FORM_FIELDS)} fields")
    form = {}
    for name, value in zip(FORM_FIELDS, values):
        if name in _INTEGERS and isinstance(value, float) and value.is_integer():
            value = int(value)  # Gradio numbers arrive as floats
        form[name] = "" if value is None and isinstance(getattr(TabForm, name, None), str) else value
    return TabForm(**form)


class Places(Protocol):
    """Where a host keeps models: the folders the tab reads and writes, and its checkpoint list."""

    checkpoint_folder: Path  # the cleaned checkpoint goes here, where the UI lists checkpoints
    lora_folder: Path  # the LoRA goes here, where the UI's Lora loader finds it
    state_folder: Path  # the resumable training state and "my lists" files: a folder the UI does not list
    cache_dir: Path | None  # rgd's cache of sampled data (None: rgd's default)

    def checkpoint_path(self, choice: str) -> Path: ...


def settings_for(form: TabForm, places: Places) -> dict:
    """``rgd unlearn``'s resolved settings for the form (``RGDInputError``, one line, when something is wrong)."""
    if not form.checkpoint:
        raise RGDInputError("choose a checkpoint to clean (press the refresh button if the list is empty).")
    if not form.concept.strip():
        raise RGDInputError("type the concept to erase, e.g. nudity or 'Van Gogh'.")
    if not form.save_checkpoint and not (form.scope == LORA_SCOPE and form.save_lora):
        raise RGDInputError("nothing to save: tick Save checkpoint, or Save LoRA with the lora scope.")
    checkpoint = places.checkpoint_path(form.checkpoint)
    settings = {key: getattr(form, key) for key in (
        "concept", "method", "scope", "steps", "retain_weight", "truncation_threshold", "lr", "batch_size", "seed",
        "lora_rank", "train_prompts", "sample_steps", "guidance", "sampler", "overwrite", "resume", "save_lora",
        "neighbour_share", "stop_ratio", "precision", "gradient_checkpointing", "forget_objective")}
    settings.update(
        checkpoint=str(checkpoint),
        concept=form.concept.strip(),
        name=form.name.strip() or None,
        # The report goes beside the model; with the LoRA alone, beside the LoRA.
        out=str(places.checkpoint_folder if form.save_checkpoint else places.lora_folder),
        format="single-file" if form.save_checkpoint else "none",
        lora_out=str(places.lora_folder),
        state_dir=str(places.state_folder),
        cache_dir=str(places.cache_dir) if places.cache_dir else None,
        synonyms=form.synonyms.strip() or None,
        neighbours=form.neighbours.strip() or None,
        family=None if form.family in (AUTO_FAMILY, "", None) else form.family,
        config_folder=form.config_folder.strip() or None,
        # left at SD's target, the checkpoint's family decides (Flux.1 and SD3.x stop at 7), as the node does
        stop_ratio=None if form.stop_ratio == STOP_RATIO else form.stop_ratio,
    )
    if form.judge not in (NO_JUDGE, "", None):  # the judge's fields count only with a judge chosen
        settings.update(judge=form.judge, stop_share=form.stop_share,
                        judge_clip=(form.judge_clip.strip() or None) if form.judge == "clip" else None)
    preset = form.prompt_preset
    lists: dict = {}  # path -> lines of the user's own prompt lists, written once every setting is checked
    if preset not in PROMPT_PRESET_CHOICES:
        raise RGDInputError(f"prompt preset must be one of {', '.join(PROMPT_PRESET_CHOICES)}, not {preset!r}.")
    if preset == LISTS_PRESET:
        lists = _list_files(form, places, output_name(settings))
        forget_file, retain_file = lists
        settings.update(forget_prompts=str(forget_file), retain_prompts=str(retain_file))
    elif preset == "custom":
        settings.update(prompt_preset="custom", custom_template=form.custom_template.strip() or None,
                        slot=prompt_lines(form.slots) or None)
    elif preset != AUTO_PRESET:
        settings["prompt_preset"] = preset
    resolved = resolve_settings(settings)
    for path, lines in lists.items():
        atomic_write_bytes(("\n".join(lines) + "\n").encode("utf-8"), path)
    return resolved


def _list_files(form: TabForm, places: Places, name: str) -> dict[Path, list[str]]:
    """Where the user's own prompt lists go (forget, then retain: a resumed run finds them again) and their lines."""
    forget, retain = prompt_lines(form.forget_list), prompt_lines(form.retain_list)
    if not forget or len(forget) != len(retain):
        raise RGDInputError(f"your own prompt lists need one retain prompt per forget prompt, one per line; got "
                            f"{len(forget)} forget and {len(retain)} retain prompts.")
    folder = Path(places.state_folder)
    return {folder / f"{name}.forget-prompts.txt": forget, folder / f"{name}.retain-prompts.txt": retain}


def pair_preview(form: TabForm, count: int = PAIRS_SHOWN) -> str:
    """The first training pairs the form's prompt settings make, one "forget  →  retain" a line, or why none."""
    try:
        preset = form.prompt_preset
        concept = form.concept.strip()
        if not concept:
            return "Type a concept to see its prompt pairs."
        if preset == AUTO_PRESET:
            preset = default_prompt_preset(concept)
        train, _ = prompt_sets_from_inputs(
            concept, preset, max(1, min(int(form.train_prompts or 1), 10_000)), 1, int(form.seed or 0),
            synonyms=form.synonyms or None, custom_template=form.custom_template or None,
            custom_slots=prompt_lines(form.slots) or None,
            forget_prompts=prompt_lines(form.forget_list), retain_prompts=prompt_lines(form.retain_list),
            neighbours=form.neighbours or None, neighbour_share=float(form.neighbour_share or 0.0))
    except (RGDInputError, ValueError) as error:
        return f"No pairs yet: {error}"
    pairs = list(zip(train.forget_prompts, train.retain_prompts))[:count]
    return "\n".join(f"forget: {forget}\nretain: {retain}" for forget, retain in pairs)


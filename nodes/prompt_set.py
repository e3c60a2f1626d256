"""RGD Prompt Set: diverse forget/retain prompt pairs, built by the same rgd_core code as the headless path."""

from __future__ import annotations

from comfy_api.latest import io, ui

from rgd_core.errors import RGDInputError
from rgd_core.prompts import CustomTemplate, PromptSet, build_prompt_sets

from .common import CATEGORY, PromptSetType, first_error

PRESETS = ("nudity", "art-style", "object", "custom", "my lists")
PREVIEW_PAIRS = 5


def lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def parse_slots(text: str | None) -> dict[str, list[str]]:
    """``slot: word, word`` per line -> {slot: [words]}."""
    slots = {}
    for line in lines(text):
        name, sep, words = line.partition(":")
        if not sep or not name.strip():
            raise RGDInputError(f"slot line {line!r} must read 'slot: word, word, ...'.")
        slots[name.strip()] = [word.strip() for word in words.split(",") if word.strip()]
    return slots


def prompt_sets(concept: str, preset: str, train_count: int, test_count: int, seed: int, synonyms: str = "",
                custom_template: str = "", custom_slots: str = "", forget_prompts: str = "",
                retain_prompts: str = "") -> tuple[PromptSet, PromptSet]:
    """(train, test) for the node's widget values. "my lists" pairs the two lists line by line (used for both)."""
    if preset not in PRESETS:
        raise RGDInputError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}.")
    if preset == "my lists":
        forget, retain = lines(forget_prompts), lines(retain_prompts)
        if not forget or len(forget) != len(retain):
            raise RGDInputError(
                f"'my lists' needs one retain prompt per forget prompt, one per line; "
                f"got {len(forget)} and {len(retain)}."
            )
        words = tuple(w.strip() for w in [concept, *(synonyms or "").split(",")] if w.strip())
        pairs = PromptSet(concept=concept.strip() or "concept", preset="custom", seed=None,
                          pairs=tuple(zip(forget, retain)), concept_words=words)
        return pairs, pairs
    custom = None
    if preset == "custom":
        if "{concept}" not in (custom_template or ""):
            raise RGDInputError("the custom template must contain {concept}, e.g. 'a photo of {concept} {place}'.")
        custom = CustomTemplate(template=custom_template, slots=parse_slots(custom_slots))
    synonym_list = [w.strip() for w in (synonyms or "").split(",") if w.strip()] or None
    return build_prompt_sets(concept, preset=preset, train_count=train_count, test_count=test_count, seed=seed,
                             synonyms=synonym_list, custom=custom)


def preview(prompt_set: PromptSet) -> str:
    shown = [f"- {forget}\n  + {retain}" for forget, retain in prompt_set.pairs[:PREVIEW_PAIRS]]
    more = len(prompt_set) - len(shown)
    return "\n".join(shown + ([f"... and {more} more pairs"] if more > 0 else []))


class RGDPromptSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RGDPromptSet",
            display_name="RGD Prompt Set",
            category=CATEGORY,
            description="Forget prompts that name the concept, each paired with the same sentence without it "
                        "(the paper's diverse retain set). Train and test use disjoint word lists.",
            inputs=[
                io.String.Input("concept", default="nudity"),
                io.Combo.Input("preset", options=list(PRESETS), default="nudity"),
                io.Int.Input("train_count", default=800, min=1, max=100000),
                io.Int.Input("test_count", default=100, min=1, max=100000),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False),
                io.String.Input("synonyms", default="", optional=True,
                                tooltip="comma-separated other words for the concept (removed from retain prompts)"),
                io.String.Input("custom_template", default="", optional=True,
                                tooltip="preset custom: a template with {concept} and {slot} names"),
                io.String.Input("custom_slots", default="", multiline=True, optional=True,
                                tooltip="preset custom: one 'slot: word, word' line per slot"),
                io.String.Input("forget_prompts", default="", multiline=True, optional=True,
                                tooltip="preset 'my lists': one forget prompt per line"),
                io.String.Input("retain_prompts", default="", multiline=True, optional=True,
                                tooltip="preset 'my lists': the matching retain prompt per line"),
            ],
            outputs=[PromptSetType.Output(display_name="train"), PromptSetType.Output(display_name="test")],
        )

    @classmethod
    def validate_inputs(cls, concept=None, preset=None, train_count=None, test_count=None, seed=None, synonyms="",
                        custom_template="", custom_slots="", forget_prompts="", retain_prompts="") -> bool | str:
        if None in (concept, preset, train_count, test_count, seed):
            return True  # linked from another node: checked when it runs
        return first_error(lambda: prompt_sets(concept, preset, train_count, test_count, seed, synonyms,
                                               custom_template, custom_slots, forget_prompts, retain_prompts))

    @classmethod
    def execute(cls, concept, preset, train_count, test_count, seed, synonyms="", custom_template="",
                custom_slots="", forget_prompts="", retain_prompts="") -> io.NodeOutput:
        train, test = prompt_sets(concept, preset, train_count, test_count, seed, synonyms, custom_template,
                                  custom_slots, forget_prompts, retain_prompts)
        return io.NodeOutput(train, test, ui=ui.PreviewText(preview(train)))

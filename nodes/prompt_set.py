"""RGD Prompt Set: diverse forget/retain prompt pairs, built by the same rgd_core code as the headless path."""

from __future__ import annotations

from comfy_api.latest import io, ui

from rgd_core.prompts import NEIGHBOUR_SHARE, HOST_PRESETS, PromptSet, prompt_lines, prompt_sets_from_inputs

from .common import CATEGORY, PromptSetType, first_error

PRESETS = HOST_PRESETS
PREVIEW_PAIRS = 5


def prompt_sets(concept: str, preset: str, train_count: int, test_count: int, seed: int, synonyms: str = "",
                custom_template: str = "", custom_slots: str = "", forget_prompts: str = "",
                retain_prompts: str = "", neighbours: str = "",
                neighbour_share: float = NEIGHBOUR_SHARE) -> tuple[PromptSet, PromptSet]:
    """(train, test) for the node's widget values: the text boxes split into lines, then rgd_core's builder."""
    return prompt_sets_from_inputs(concept, preset, train_count, test_count, seed, synonyms, custom_template,
                                   custom_slots, prompt_lines(forget_prompts), prompt_lines(retain_prompts),
                                   neighbours, neighbour_share)


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
            description="Forget prompts that name the concept (several: separate them with ';'), each paired with "
                        "the same sentence without it (the paper's diverse retain set) or, for a share of them, "
                        "naming a neighbouring concept that must stay. Train and test use disjoint word lists.",
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
                io.String.Input("neighbours", default="", optional=True,
                                tooltip="comma-separated concepts next to this one that must stay (empty: the "
                                        "preset's own list; the object preset has none)"),
                io.Float.Input("neighbour_share", default=NEIGHBOUR_SHARE, min=0.0, max=1.0, step=0.05,
                               optional=True,
                               tooltip="share of retain prompts that name a neighbour instead of dropping the "
                                       "concept (0: none)"),
            ],
            outputs=[PromptSetType.Output(display_name="train"), PromptSetType.Output(display_name="test")],
        )

    @classmethod
    def validate_inputs(cls, concept=None, preset=None, train_count=None, test_count=None, seed=None, synonyms="",
                        custom_template="", custom_slots="", forget_prompts="", retain_prompts="", neighbours="",
                        neighbour_share=NEIGHBOUR_SHARE) -> bool | str:
        if None in (concept, preset, train_count, test_count, seed, neighbour_share):
            return True  # linked from another node: checked when it runs
        return first_error(lambda: prompt_sets(concept, preset, train_count, test_count, seed, synonyms,
                                               custom_template, custom_slots, forget_prompts, retain_prompts,
                                               neighbours, neighbour_share))

    @classmethod
    def execute(cls, concept, preset, train_count, test_count, seed, synonyms="", custom_template="",
                custom_slots="", forget_prompts="", retain_prompts="", neighbours="",
                neighbour_share=NEIGHBOUR_SHARE) -> io.NodeOutput:
        train, test = prompt_sets(concept, preset, train_count, test_count, seed, synonyms, custom_template,
                                  custom_slots, forget_prompts, retain_prompts, neighbours, neighbour_share)
        return io.NodeOutput(train, test, ui=ui.PreviewText(preview(train)))

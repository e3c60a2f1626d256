"""What a host's user typed (presets, a custom template with slot lines, their own paired lists) as prompt sets,
and the warnings about input that is probably not what was meant."""

from __future__ import annotations

from typing import Sequence

from rgd_core.errors import RGDInputError
from rgd_core.prompts.builders import build_prompt_sets
from rgd_core.prompts.neighbours import (
    NEIGHBOUR_SHARE,
    PRESET_NEIGHBOURS,
    combine,
    shares,
    split_concepts,
    with_neighbours,
)
from rgd_core.prompts.sets import CustomTemplate, PromptSet, find_concept_word

# --- a host's prompt inputs: presets, a custom template with slot lines, or the user's own paired lists ----------

LISTS_PRESET = "my lists"  # the user's own forget/retain prompts, paired line by line (used for train and test)
HOST_PRESETS = ("nudity", "art-style", "object", "custom", LISTS_PRESET)


def prompt_lines(text: str | None) -> list[str]:
    """The non-empty lines of ``text``, stripped: one prompt (or one slot) a line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def parse_slots(lines: str | Sequence[str] | None) -> dict[str, list[str]]:
    """``slot: word, word`` lines (a text or a list of lines) -> {slot: [words]}."""
    slots = {}
    for line in prompt_lines(lines) if isinstance(lines, str) or lines is None else lines:
        name, sep, words = line.partition(":")
        if not sep or not name.strip():
            raise RGDInputError(f"slot line {line!r} must read 'slot: word, word, ...'.")
        slots[name.strip()] = [word.strip() for word in words.split(",") if word.strip()]
    return slots


def split_synonyms(text: str | Sequence[str] | None) -> list[str]:
    """Comma-separated synonyms (or a list of them), stripped, empty ones dropped."""
    parts = text.split(",") if isinstance(text, str) else list(text or ())
    return [word.strip() for word in parts if word.strip()]


def prompt_sets_from_inputs(concept: str, preset: str, train_count: int, test_count: int, seed: int,
                            synonyms: str | Sequence[str] | None = None, custom_template: str | None = None,
                            custom_slots: str | Sequence[str] | None = None,
                            forget_prompts: Sequence[str] | None = None,
                            retain_prompts: Sequence[str] | None = None,
                            neighbours: str | Sequence[str] | None = None,
                            neighbour_share: float = NEIGHBOUR_SHARE) -> tuple[PromptSet, PromptSet]:
    """(train, test) from what a host's user typed: the ComfyUI Prompt Set node, ``rgd unlearn`` and the tab all
    call this, so a setting means the same everywhere.

    ``preset`` is one of HOST_PRESETS. "custom" takes ``custom_template`` (with ``{concept}``) and ``custom_slots``
    lines ("place: in a park, at the beach"); "my lists" pairs ``forget_prompts[i]`` with ``retain_prompts[i]``
    and uses the same pairs for train and test.

    ``concept`` may name several concepts separated by ";" (``neighbours.split_concepts``): each gets its share of
    ``train_count`` and ``test_count`` and one run erases them all (``neighbours.combine``). ``neighbours``
    (comma-separated or a list; empty: the preset's own, ``PRESET_NEIGHBOURS``) replace ``neighbour_share`` of the
    train retain twins (``neighbours.with_neighbours``; a share of 0 keeps every plain twin); the test set keeps
    plain twins, so it measures the same thing with or without them.
    """
    if preset not in HOST_PRESETS:
        raise RGDInputError(f"prompt preset must be one of {', '.join(HOST_PRESETS)}, not {preset!r}.")
    concepts = split_concepts(concept or "")
    if len(concepts) > 1 and preset != LISTS_PRESET:
        if synonyms and split_synonyms(synonyms):
            raise RGDInputError("synonyms with several concepts would be ambiguous; give each other name as a concept "
                                "of its own (separated by ';').")
        sets = []
        for name, train_n, test_n in zip(concepts, shares(train_count, len(concepts)), shares(test_count,
                                                                                            len(concepts))):
            others = [other for other in concepts if other != name]
            sets.append(_one_concept(name, preset, train_n, test_n, seed, None, custom_template, custom_slots,
                                     exclude=others))
        train, test = combine([s[0] for s in sets]), combine([s[1] for s in sets])
    else:
        train, test = _one_concept(concept, preset, train_count, test_count, seed, synonyms, custom_template,
                                   custom_slots, forget_prompts, retain_prompts)
        if preset == LISTS_PRESET:
            return train, test
    chosen = split_synonyms(neighbours)
    if not chosen:  # the preset's own list, less any name of a concept this run erases (Monet beside Van Gogh)
        chosen = [n for n in PRESET_NEIGHBOURS.get(preset, ()) if find_concept_word(n, train.concept_words) is None]
    return with_neighbours(train, chosen, neighbour_share, seed), test


def _one_concept(concept, preset, train_count, test_count, seed, synonyms, custom_template, custom_slots,
                 forget_prompts=None, retain_prompts=None, exclude=()) -> tuple[PromptSet, PromptSet]:
    words = split_synonyms(synonyms)
    if preset == LISTS_PRESET:
        forget, retain = list(forget_prompts or ()), list(retain_prompts or ())
        if not forget or len(forget) != len(retain):
            raise RGDInputError(f"your own prompt lists need one retain prompt per forget prompt, one per line; "
                                f"got {len(forget)} forget and {len(retain)} retain prompts.")
        concept_words = tuple(w for w in [" ".join((concept or "").split()), *words] if w)
        pairs = PromptSet(concept=concept.strip() or "concept", preset="custom", seed=None,
                          pairs=tuple(zip(forget, retain)), concept_words=concept_words)
        return pairs, pairs
    custom = None
    if preset == "custom":
        if "{concept}" not in (custom_template or ""):
            raise RGDInputError("the custom template must contain {concept}, e.g. 'a photo of {concept} {place}'.")
        custom = CustomTemplate(template=custom_template, slots=parse_slots(custom_slots))
    return build_prompt_sets(concept, preset=preset, train_count=train_count, test_count=test_count, seed=seed,
                             synonyms=words or None, custom=custom, exclude=exclude)


def unnamed_concept_warning(forget_texts: Sequence[str], concept_words: Sequence[str],
                            what: str = "forget prompts") -> str | None:
    """A line for the log when forget prompts or image captions never name the concept: training would then
    erase something else. None when every text names it."""
    unnamed = [text for text in forget_texts if find_concept_word(text, concept_words) is None]
    if not unnamed:
        return None
    share = "none of the" if len(unnamed) == len(forget_texts) else f"{len(unnamed)} of {len(forget_texts)}"
    return (f"{share} {what} name the concept ({', '.join(concept_words)}), e.g. {unnamed[0]!r}; check the "
            "concept or add --synonyms.")


def long_prompt_warning(texts: Sequence[str], token_counts: Sequence[int], token_limit: int = 77,
                        what: str = "prompts") -> str | None:
    """A line for the log when prompts are longer than the text encoder's ``token_limit`` (``token_counts``
    include the start and end tokens): their end is cut and never reaches the model."""
    long = [(text, count) for text, count in zip(texts, token_counts) if count > token_limit]
    if not long:
        return None
    text, count = max(long, key=lambda item: item[1])
    return (f"{len(long)} {what} are longer than the text encoder's {token_limit} tokens and will be cut (the "
            f"longest loses {count - token_limit} tokens: {text[:60]!r}...).")

"""Presets, disjoint train/test vocabularies, seeded sampling of unique pairs: ``build_prompt_sets``."""

from __future__ import annotations

import random
from math import prod
from typing import Mapping, Sequence

from rgd_core.errors import RGDInputError
from rgd_core.prompts.sets import (
    CONCEPT_FIELD,
    CustomTemplate,
    Preset,
    PromptSet,
    check_disjoint_vocabularies,
    check_fluent,
    check_pair,
    check_word_lists,
    find_concept_word,
    remove_concept,
    render,
    template_fields,
    tidy,
)
from rgd_core.prompts.word_lists import (
    ART_NARROW,
    ART_TEMPLATES,
    ART_TEST_SLOTS,
    ART_TRAIN_SLOTS,
    NUDITY_NARROW,
    NUDITY_RETAIN_TEMPLATE,
    NUDITY_TEMPLATE,
    NUDITY_TEST_SLOTS,
    NUDITY_TRAIN_SLOTS,
    NUDITY_WORDS,
    OBJECT_NARROW,
    OBJECT_TEMPLATES,
    OBJECT_TEST_SLOTS,
    OBJECT_TRAIN_SLOTS,
)

PRESET_NAMES = ("nudity", "art-style", "object", "custom")

# --- presets ---------------------------------------------------------------------------------------------------


def builtin_preset(name: str) -> Preset:
    if name == "nudity":
        return Preset(name, ((NUDITY_TEMPLATE, NUDITY_RETAIN_TEMPLATE),), NUDITY_TRAIN_SLOTS, NUDITY_TEST_SLOTS,
                      NUDITY_NARROW)
    if name == "art-style":
        return Preset(name, ART_TEMPLATES, ART_TRAIN_SLOTS, ART_TEST_SLOTS, ART_NARROW)
    if name == "object":
        return Preset(name, OBJECT_TEMPLATES, OBJECT_TRAIN_SLOTS, OBJECT_TEST_SLOTS, OBJECT_NARROW)
    raise RGDInputError(f"unknown prompt preset {name!r}; use one of {', '.join(PRESET_NAMES)}.")


def split_vocabulary(slots: Mapping[str, tuple[str, ...]]) -> tuple[dict, dict]:
    """Hold out the last quarter (at least one word) of each list, so a custom template still gets a test split."""
    train, test = {}, {}
    for slot, words in slots.items():
        if len(words) < 2:
            raise RGDInputError(
                f"slot {slot!r} has one word, too few to split into train and test; add words or give test_slots."
            )
        held_out = max(1, len(words) // 4)
        train[slot], test[slot] = words[:-held_out], words[-held_out:]
    return train, test


def custom_preset(custom: CustomTemplate | Mapping) -> Preset:
    """Validate a user's template and word lists and turn them into a Preset."""
    if isinstance(custom, Mapping):
        unknown = set(custom) - {"template", "slots", "test_slots", "retain_template"}
        if unknown:
            raise RGDInputError(f"custom template has unknown keys {sorted(unknown)}; use template, slots, "
                                "test_slots and retain_template.")
        custom = CustomTemplate(**custom)
    if not isinstance(custom.template, str) or not custom.template.strip():
        raise RGDInputError("custom template is empty; write one such as 'a {mood} {concept} {place}'.")
    forget_template = " ".join(custom.template.split())
    fields = template_fields(forget_template)
    if CONCEPT_FIELD not in fields:
        raise RGDInputError(f"custom template {forget_template!r} has no {{concept}}; put it where the concept goes.")
    if custom.retain_template is None:
        retain_template = remove_concept(forget_template)
    else:
        retain_template = tidy(custom.retain_template)
    retain_fields = template_fields(retain_template)
    if CONCEPT_FIELD in retain_fields:
        raise RGDInputError(f"retain template {retain_template!r} contains {{concept}}; leave the concept out of it.")
    if not set(retain_fields) <= set(fields):
        raise RGDInputError(
            f"retain template {retain_template!r} uses slots the forget template lacks; use the same slots."
        )
    slot_names = [name for name in fields if name != CONCEPT_FIELD]
    if not isinstance(custom.slots, Mapping):
        raise RGDInputError("custom slots must map each slot name to a list of words.")
    missing = [name for name in slot_names if name not in custom.slots]
    extra = [name for name in custom.slots if name not in slot_names]
    if missing or extra:
        raise RGDInputError(
            f"custom slots must match the template's {slot_names}: missing {missing}, not in template {extra}."
        )
    train = check_word_lists(custom.slots, "train")
    if custom.test_slots is None:
        train, test = split_vocabulary(train)
    else:
        if not isinstance(custom.test_slots, Mapping):
            raise RGDInputError("custom test_slots must map each slot name to a list of words.")
        test = check_word_lists(custom.test_slots, "test")
    check_disjoint_vocabularies(train, test)
    return Preset("custom", ((forget_template, retain_template),), train, test, (forget_template, retain_template))


def concept_words_for(concept: str, preset: str, synonyms: Sequence[str] | None) -> tuple[str, ...]:
    """The words that carry the concept: the paper's five for nudity, else the concept; synonyms added to both."""
    base = NUDITY_WORDS if preset == "nudity" else (concept,)
    if isinstance(synonyms, str):
        synonyms = [synonyms]
    words = []
    for word in (*base, *(synonyms or ())):
        word = " ".join(str(word).split())
        if not word:
            raise RGDInputError("a concept synonym is empty; remove it or give the word.")
        if word.lower() not in {w.lower() for w in words}:
            words.append(word)
    return tuple(words)


def without_concept_words(slots: Mapping[str, tuple[str, ...]], words: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Built-in lists minus any word naming the concept, so erasing "garden" never makes "a flower garden" a retain
    prompt. Custom lists are the user's own and are never filtered: a clash there is an error."""
    kept = {slot: tuple(w for w in options if find_concept_word(w, words) is None) for slot, options in slots.items()}
    for slot, options in kept.items():
        if not options:
            raise RGDInputError(f"every word of slot {slot!r} names the concept; use preset='custom' with your own.")
    return kept


def check_no_concept_in_slots(preset: Preset, words: Sequence[str]) -> None:
    for slots in (preset.train_slots, preset.test_slots):
        for slot, options in slots.items():
            for option in options:
                found = find_concept_word(option, words)
                if found is not None:
                    raise RGDInputError(
                        f"slot {slot!r} word {option!r} contains the concept word {found!r}; remove it from the list."
                    )


# --- sampling --------------------------------------------------------------------------------------------------


def combination_counts(templates: Sequence[tuple[str, str]], slots: Mapping[str, Sequence[str]]) -> list[int]:
    """Unique retain prompts per template: the product of its retain slots' list sizes."""
    return [prod(len(slots[name]) for name in template_fields(retain)) for _, retain in templates]


def unique_pair_count(preset: Preset, split: str = "train") -> int:
    """The most distinct pairs a split can give: each retain prompt used once, as in the paper's files."""
    return sum(combination_counts(preset.templates, preset.train_slots if split == "train" else preset.test_slots))


def decode(index: int, names: Sequence[str], slots: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Mixed-radix index -> one word per slot, so sampling never materialises the Cartesian product."""
    words = {}
    for name in reversed(names):
        index, digit = divmod(index, len(slots[name]))
        words[name] = slots[name][digit]
    return words


def sample_pairs(
    templates: Sequence[tuple[str, str]],
    slots: Mapping[str, Sequence[str]],
    words: Sequence[str],
    count: int,
    rng: random.Random,
) -> list[tuple[str, str]]:
    """``count`` pairs with all-distinct retain prompts, drawn without replacement from the Cartesian product.

    The paper's 800 training pairs are 800 distinct retain sentences, each given one nudity word; likewise here the
    retain-visible slots are sampled without replacement and the concept word (and any forget-only slot, such as the
    object adjective) is drawn per pair.
    """
    counts = combination_counts(templates, slots)
    fields = [(template_fields(forget), template_fields(retain)) for forget, retain in templates]
    chosen = rng.sample(range(sum(counts)), count)
    pairs = []
    for index in chosen:
        for (forget, retain), (forget_fields, retain_fields), size in zip(templates, fields, counts):
            if index < size:
                break
            index -= size
        filled = decode(index, retain_fields, slots)
        filled[CONCEPT_FIELD] = rng.choice(words)
        for name in forget_fields:
            if name not in filled:
                filled[name] = rng.choice(slots[name])
        pairs.append((render(forget, filled), render(retain, filled)))
    return pairs


def narrow_pairs(preset: Preset, words: Sequence[str], count: int) -> list[tuple[str, str]]:
    """The low-diversity ablation: one template, the first word of each slot, concept words in turn.

    nudity: "a photo of a {concept} person" / SalUn's "a photo of a person wearing clothes"; art-style: "a painting
    in the style of {concept}" / "a painting"; object: "a photo of the {concept}" / "a photo"; custom: the user's
    template with the first train word of every slot. Pairs repeat to reach ``count``, as a fixed retain prompt
    does in SalUn, so there are as many distinct forget prompts as concept words and a single retain prompt.
    """
    forget, retain = preset.narrow_template
    filled = {name: preset.train_slots[name][0] for name in template_fields(forget) if name != CONCEPT_FIELD}
    pairs = []
    for i in range(count):
        filled[CONCEPT_FIELD] = words[i % len(words)]
        pairs.append((render(forget, filled), render(retain, filled)))
    return pairs


# How each host spells the counts, for messages: the library argument, then the CLI flag.
COUNT_NAMES = {"train_count": "train_count (--train-prompts)", "test_count": "test_count"}


def check_count(name: str, count: int, maximum: int | None, preset: str) -> None:
    shown = COUNT_NAMES.get(name, name)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RGDInputError(f"{shown} must be a whole number of at least 1, not {count!r}.")
    if maximum is not None and count > maximum:
        raise RGDInputError(
            f"{shown} = {count} is more than the {maximum} unique prompts the {preset} preset can make; "
            f"ask for at most {maximum} or add slot words."
        )


def check_split(pairs: Sequence[tuple[str, str]], words: Sequence[str], split: str) -> None:
    retains = [retain for _, retain in pairs]
    if len(set(retains)) != len(retains):
        raise RGDInputError(f"the {split} word lists give the same retain prompt twice; make the slot words distinct.")
    for forget, retain in pairs:
        check_pair(forget, retain, words)
        check_fluent(retain)


def build_prompt_sets(
    concept: str,
    preset: str = "nudity",
    train_count: int = 800,
    test_count: int = 100,
    seed: int = 0,
    synonyms: Sequence[str] | None = None,
    narrow: bool = False,
    custom: CustomTemplate | Mapping | None = None,
    exclude: Sequence[str] = (),
) -> tuple[PromptSet, PromptSet]:
    """Train and test prompt sets for erasing ``concept`` (Section 3.2, Appendix D).

    With the nudity preset and the defaults this has the shape of the paper's released files: 800 distinct train
    pairs, 100 distinct test pairs, and no prompt and no slot word shared between the two. ``narrow`` replaces the
    *train* set by the low-diversity baseline (see ``narrow_pairs``); the test set stays the diverse held-out one, so
    the ablation measures what narrow training costs on unseen prompts. Train and test draw from separate random
    streams, so changing ``train_count`` does not change the test prompts. ``exclude`` lists words (other concepts
    erased in the same run) that no prompt may contain: built-in slot words naming them are dropped, custom ones
    refused.
    """
    if not isinstance(concept, str) or not concept.strip():
        raise RGDInputError("concept is empty; give the word or name to erase, e.g. 'nudity' or 'Van Gogh'.")
    concept = " ".join(concept.split())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RGDInputError(f"seed must be a whole number, not {seed!r}.")
    if custom is not None and preset != "custom":
        raise RGDInputError(f"a custom template was given with preset={preset!r}; pass preset='custom'.")
    if preset == "custom" and custom is None:
        raise RGDInputError("preset='custom' needs custom=CustomTemplate(template=..., slots=...).")
    words = concept_words_for(concept, preset, synonyms)
    kept_out = (*words, *exclude)
    if preset == "custom":
        spec = custom_preset(custom)
        check_no_concept_in_slots(spec, kept_out)
    else:
        spec = builtin_preset(preset)
        spec = Preset(spec.name, spec.templates, without_concept_words(spec.train_slots, kept_out),
                      without_concept_words(spec.test_slots, kept_out), spec.narrow_template)

    check_count("test_count", test_count, unique_pair_count(spec, "test"), preset)
    if narrow:
        check_count("train_count", train_count, None, preset)
        train = narrow_pairs(spec, words, train_count)
    else:
        check_count("train_count", train_count, unique_pair_count(spec, "train"), preset)
        train = sample_pairs(spec.templates, spec.train_slots, words, train_count, random.Random(f"{seed}:train"))
    test = sample_pairs(spec.templates, spec.test_slots, words, test_count, random.Random(f"{seed}:test"))
    check_split(test, words, "test")
    if not narrow:
        check_split(train, words, "train")
    else:
        for forget, retain in train[: len(words)]:
            check_pair(forget, retain, words)
            check_fluent(retain)

    shared = {p for pair in train for p in pair} & {p for pair in test for p in pair}
    if shared:
        raise RGDInputError(f"train and test share the prompt {sorted(shared)[0]!r}; make the word lists disjoint.")
    common = dict(concept=concept, preset=preset, seed=seed, concept_words=words)
    return (
        PromptSet(pairs=tuple(train), split="train", narrow=narrow, **common),
        PromptSet(pairs=tuple(test), split="test", narrow=False, **common),
    )

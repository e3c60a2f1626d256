"""Diverse forget/retain prompt pairs: the "dataset diversification" half of RGD.

Ko et al., "Boosting Alignment for Post-Unlearning Text-to-Image Generative Models" (NeurIPS 2024), Section 3.2
and Appendix D: write many prompts that contain the concept c (varying moods, actions, places, times), remove c from
each to get the retain prompt, and split the *semantic dimensions* so that the held-out test prompts share no slot
word with the training prompts. A narrow retain set (SalUn's single "a photo of a person wearing clothes") overfits
and loses alignment on unseen prompts (Fig. 1); the ``narrow`` option builds that baseline for the ablation.

Everything here is pure and deterministic for a seed; only ``PromptSet.save`` / ``PromptSet.load`` touch files.

Vocabulary
    concept word  a word or name that carries the concept: the paper's five nudity words, or the concept itself
                  plus the user's synonyms ("Van Gogh", "Vincent van Gogh").
    slot          a named field of a template ("{emotion}") filled from a word list; train and test lists of one
                  preset share no word.
    retain twin   the forget prompt with the concept removed so the sentence stays fluent (rules per preset below).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import Mapping, Sequence

from .errors import RGDInputError

PRESET_NAMES = ("nudity", "art-style", "object", "custom", "shapes")  # shapes: the offline benchmark world
SPLITS = ("train", "test")
CONCEPT_FIELD = "concept"

# --- nudity: the paper's released prompt files, verbatim (docs/method.md section 3) -------------------------------

# Always "A", even before a vowel ("A energetic bare person ..."), because that is what the paper's files contain.
NUDITY_TEMPLATE = "A {emotion} {concept} person {activity} {location} {time}."
NUDITY_RETAIN_TEMPLATE = "A {emotion} person {activity} {location} {time}."
NUDITY_WORDS = ("naked", "nude", "bare", "unclad", "undressed")
NUDITY_TRAIN_SLOTS = {
    "emotion": ("contemplative", "joyful", "energetic", "peaceful", "tense", "anxious", "relaxed"),
    "activity": ("sitting", "dancing", "walking", "cooking", "meditating", "standing", "reading", "jogging"),
    "location": (
        "on a rooftop", "in a bustling city street", "in a cozy room", "in a forest", "in a crowded market",
        "at a quiet beach", "by the lake", "in lush green mountains",
    ),
    "time": (
        "in the afternoon", "at midnight", "as the sun rises", "during the morning", "under the moonlight",
        "at sunset", "at dawn",
    ),
}
NUDITY_TEST_SLOTS = {
    "emotion": ("melancholic", "excited", "hopeful", "disillusioned"),
    "activity": ("painting", "playing guitar", "sketching", "shopping"),
    "location": ("in a bright, airy studio", "on a snowy mountain", "in a desert", "in an urban park"),
    "time": ("early evening", "late night", "at noon", "during twilight"),
}
# SalUn's single retain prompt: the low-diversity baseline the paper argues against.
NUDITY_NARROW = ("a photo of a {concept} person", "a photo of a person wearing clothes")

# --- art-style: the style phrase is a whole clause, so the retain twin drops the clause, not just the name ------

ART_TEMPLATES = (
    ("{subject} {location} {time}, in the style of {concept}", "{subject} {location} {time}"),
    ("a painting of {subject} {location} {time} by {concept}", "a painting of {subject} {location} {time}"),
    ("an artwork by {concept} showing {subject} {location} {time}", "an artwork showing {subject} {location} {time}"),
)
ART_TRAIN_SLOTS = {
    "subject": (
        "a lighthouse", "an old fisherman", "a field of sunflowers", "a sailing boat", "a woman with an umbrella",
        "a stone bridge", "a cat", "a bowl of fruit", "a farmhouse", "a crowd of dancers",
    ),
    "location": (
        "on a rocky coast", "in a wheat field", "along a river", "in a small kitchen", "on a hilltop",
        "in a city square", "in a flower garden", "near a harbor",
    ),
    "time": ("at dawn", "at sunset", "at night", "in the rain", "on a summer afternoon", "under a stormy sky"),
}
ART_TEST_SLOTS = {
    "subject": ("a windmill", "a sleeping dog", "a violin player", "a vase of roses", "a steam train"),
    "location": ("in a snowy forest", "on a crowded beach", "beside a waterfall", "in a candlelit room"),
    "time": ("in thick fog", "at twilight", "on a winter morning", "under the stars"),
}
ART_NARROW = ("a painting in the style of {concept}", "a painting")

# --- object: the adjective describes the object, so it leaves with it; the scene (medium, place, time) stays -----
# Swapping the noun for a stand-in ("a rusty scene") would read badly and name something the image may not show;
# dropping the whole object phrase keeps the retain prompt fluent and as close as possible to the forget prompt's
# picture: the same place, time and medium, minus the object.

OBJECT_TEMPLATES = (
    ("{medium} of a {adjective} {concept} in {place} {time}", "{medium} of {place} {time}"),
    ("{place} {time}, with a {adjective} {concept} in the foreground", "{place} {time}"),
)
# Adjectives start with a consonant sound so "a {adjective}" is right whatever the concept noun is.
OBJECT_TRAIN_SLOTS = {
    "medium": (
        "a photo", "an oil painting", "a watercolor painting", "a pencil sketch", "a wide-angle photo",
        "a postcard picture",
    ),
    "adjective": ("small", "large", "weathered", "brand-new", "colorful", "dusty", "shiny", "plain"),
    "place": (
        "a quiet village", "a busy harbor", "a sunlit meadow", "a narrow alley", "a city park", "a snowy valley",
        "a cluttered workshop", "a pine forest", "a town square", "a flower garden", "a rainy street",
        "a mountain pass", "a wheat field", "a sandy riverbank",
    ),
    "time": (
        "at dawn", "at dusk", "at noon", "at night", "in the rain", "in heavy fog", "in autumn", "in winter",
        "on a sunny morning", "under a cloudy sky", "at sunset", "on a windy afternoon",
    ),
}
OBJECT_TEST_SLOTS = {
    "medium": ("a polaroid snapshot", "a charcoal drawing", "a digital illustration", "a vintage photograph"),
    "adjective": ("tiny", "huge", "battered", "gleaming"),
    "place": ("a desert canyon", "a misty marsh", "a crowded train station", "an empty parking lot", "a bamboo grove"),
    "time": ("during a thunderstorm", "at first light", "on a summer evening", "in springtime", "under a starry sky"),
}
# "the", not "a": the concept noun may start with a vowel and nothing here knows its article.
OBJECT_NARROW = ("a photo of the {concept}", "a photo")

# A retain prompt must not end a clause on one of these: "a painting by." is what a careless removal leaves.
_DANGLING = re.compile(r"\b(a|an|the|by|of|in|on|at|with|and|from|like|for|to)\s*(?=[,.;:!?]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Preset:
    """Templates as (forget, retain) pairs, the two disjoint slot vocabularies and the narrow (ablation) pair.

    A slot that appears in the forget template but not in the retain one (the object adjective) is drawn per pair
    and does not count towards the unique combinations, exactly like the concept word itself.
    """

    name: str
    templates: tuple[tuple[str, str], ...]
    train_slots: Mapping[str, tuple[str, ...]]
    test_slots: Mapping[str, tuple[str, ...]]
    narrow_template: tuple[str, str]


@dataclass(frozen=True)
class CustomTemplate:
    """A user's own template for ``preset="custom"``.

    ``template`` holds ``{concept}`` and named slots, e.g. "a {mood} {concept} {place}". ``slots`` maps each slot to
    its train words; ``test_slots`` gives the held-out words (if left out, the last quarter of each list, at least
    one word, is held out). ``retain_template`` defaults to ``template`` with ``{concept}`` and one space removed;
    give it when that removal would not read well: "... by {concept}" would leave a dangling "by" (rejected), and
    "a {mood} {concept} {place}" would leave "a happy in a park" (not detected), so write "a {mood} animal {place}".
    """

    template: str
    slots: Mapping[str, Sequence[str]]
    test_slots: Mapping[str, Sequence[str]] | None = None
    retain_template: str | None = None


@dataclass(frozen=True)
class PromptSet:
    """(forget prompt, retain prompt) pairs for one concept and one split: D_f's and D_r's captions.

    Pair i is one training example of each set: the forget prompt y_c names the concept, the retain prompt y is the
    closest sentence without it. The JSON form keeps the two lists side by side as the paper's files do.
    """

    concept: str
    preset: str
    seed: int | None
    pairs: tuple[tuple[str, str], ...]
    concept_words: tuple[str, ...] = ()
    split: str = "train"
    narrow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise RGDInputError("PromptSet has an empty concept; give the word or name that was erased.")
        pairs = tuple(tuple(pair) for pair in self.pairs)
        if any(len(pair) != 2 or not all(isinstance(p, str) for p in pair) for pair in pairs):
            raise RGDInputError("every prompt pair must be two strings (forget prompt, retain prompt).")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "concept_words", tuple(self.concept_words) or (self.concept,))
        if not all(isinstance(word, str) and word.strip() for word in self.concept_words):
            raise RGDInputError("PromptSet concept_words must be non-empty strings; list the words that name it.")
        if self.split not in SPLITS:
            raise RGDInputError(f"PromptSet split {self.split!r} is unknown; use 'train' or 'test'.")
        if not self.pairs:
            raise RGDInputError("PromptSet has no prompt pairs; give at least one (forget, retain) pair.")
        for forget, retain in self.pairs:
            check_pair(forget, retain, self.concept_words)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def forget_prompts(self) -> list[str]:
        return [forget for forget, _ in self.pairs]

    @property
    def retain_prompts(self) -> list[str]:
        return [retain for _, retain in self.pairs]

    def to_dict(self) -> dict:
        return {
            "concept": self.concept,
            "preset": self.preset,
            "seed": self.seed,
            "split": self.split,
            "narrow": self.narrow,
            "concept_words": list(self.concept_words),
            "forget_prompts": self.forget_prompts,
            "retain_prompts": self.retain_prompts,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> PromptSet:
        if not isinstance(data, Mapping):
            raise RGDInputError("prompt set JSON must be an object with forget_prompts and retain_prompts lists.")
        missing = [key for key in ("concept", "forget_prompts", "retain_prompts") if key not in data]
        if missing:
            raise RGDInputError(f"prompt set JSON lacks {', '.join(missing)}; save it with PromptSet.save().")
        forget, retain = data["forget_prompts"], data["retain_prompts"]
        if not isinstance(forget, list) or not isinstance(retain, list):
            raise RGDInputError("forget_prompts and retain_prompts must be JSON lists of strings.")
        if len(forget) != len(retain):
            raise RGDInputError(
                f"prompt set JSON has {len(forget)} forget prompts but {len(retain)} retain prompts; "
                "every forget prompt needs its retain twin."
            )
        return cls(
            concept=data["concept"],
            preset=data.get("preset", "custom"),
            seed=data.get("seed"),
            pairs=tuple(zip(forget, retain)),
            concept_words=tuple(data.get("concept_words") or ()),
            split=data.get("split", "train"),
            narrow=bool(data.get("narrow", False)),
        )

    @classmethod
    def from_json(cls, text: str) -> PromptSet:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            message = f"prompt set is not valid JSON ({error}); regenerate it with PromptSet.save()."
            raise RGDInputError(message) from None
        return cls.from_dict(data)

    def digest(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): a cache key that ignores formatting."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> Path:
        # Imported here: rgd_core.io pulls in torch, which the prompt logic itself never needs.
        from .io import atomic_write_bytes

        return atomic_write_bytes((self.to_json() + "\n").encode("utf-8"), path)

    @classmethod
    def load(cls, path: str | Path) -> PromptSet:
        path = Path(path)
        if not path.is_file():
            raise RGDInputError(f"prompt set file {path} does not exist; build one with build_prompt_sets().")
        return cls.from_json(path.read_text(encoding="utf-8"))


# --- checks ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _word_pattern(words: tuple[str, ...]) -> re.Pattern:
    # Whole words only: erasing "bare" must not reject "barely", nor "cat" reject "category".
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def find_concept_word(text: str, words: Sequence[str]) -> str | None:
    """The first concept word that ``text`` contains as a whole word (case-insensitive), or None."""
    match = _word_pattern(tuple(words)).search(text) if words else None
    return match.group(0) if match else None


def check_pair(forget: str, retain: str, words: Sequence[str]) -> None:
    """A forget prompt must name the concept; its retain twin must not (Section 3.2: y is y_c without c)."""
    if not forget.strip() or not retain.strip():
        raise RGDInputError("a prompt pair has an empty prompt; every pair needs a forget and a retain sentence.")
    if find_concept_word(forget, words) is None:
        raise RGDInputError(
            f"forget prompt {forget!r} does not contain the concept ({', '.join(words)}); put {{concept}} in its "
            "template, or list the word it uses as a synonym."
        )
    found = find_concept_word(retain, words)
    if found is not None:
        raise RGDInputError(
            f"retain prompt {retain!r} still contains the concept word {found!r}; remove it from the template "
            "or the slot words."
        )


def check_fluent(retain: str) -> None:
    """Catch what a removal typically breaks: doubled spaces, stray commas, a clause ending on "by"/"of"/"a"."""
    if "  " in retain or retain != retain.strip() or re.search(r"\s[,.;:!?]|,\s*[,.]|^[,.;:]", retain):
        raise RGDInputError(f"retain prompt {retain!r} has stray spaces or punctuation; fix the retain template.")
    dangling = _DANGLING.search(retain)
    if dangling:
        raise RGDInputError(
            f"retain prompt {retain!r} ends a clause on {dangling.group(1)!r}; give a retain_template without it."
        )


def check_disjoint_vocabularies(
    train_slots: Mapping[str, Sequence[str]], test_slots: Mapping[str, Sequence[str]]
) -> None:
    """Appendix D: train and test prompts come from split semantic dimensions, so no slot word is in both.

    Checked across all slots, not slot by slot, so a word cannot sneak into the test set through another slot.
    """
    if set(train_slots) != set(test_slots):
        raise RGDInputError(
            f"train slots {sorted(train_slots)} and test slots {sorted(test_slots)} differ; give both the same names."
        )
    train_words = {word.lower() for words in train_slots.values() for word in words}
    shared = sorted({word for words in test_slots.values() for word in words if word.lower() in train_words})
    if shared:
        raise RGDInputError(
            f"train and test word lists share {', '.join(map(repr, shared))}; remove them from one of the two."
        )


def check_word_lists(slots: Mapping[str, Sequence[str]], split: str) -> dict[str, tuple[str, ...]]:
    """Word lists as tuples of stripped, non-empty, unique strings; duplicates would make "unique" counts lie."""
    checked = {}
    for slot, words in slots.items():
        if isinstance(words, str) or not isinstance(words, Sequence):
            kind = type(words).__name__
            raise RGDInputError(f"{split} words for slot {slot!r} must be a list of strings, not a {kind}.")
        cleaned = tuple(" ".join(str(word).split()) for word in words)
        if not cleaned:
            raise RGDInputError(f"{split} word list for slot {slot!r} is empty; give at least one word.")
        if any(not word for word in cleaned):
            raise RGDInputError(f"{split} word list for slot {slot!r} has an empty word; remove it.")
        if len({word.lower() for word in cleaned}) != len(cleaned):
            raise RGDInputError(f"{split} word list for slot {slot!r} repeats a word; list each word once.")
        checked[slot] = cleaned
    return checked


# --- templates -------------------------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """Named fields of a str.format template, in order of first appearance; rejects "{}" and "{a.b}"."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise RGDInputError(f"template {template!r} has unbalanced braces ({error}); write slots as {{name}}.")
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise RGDInputError(f"template {template!r} has field {{{name}}}; write slots as plain {{name}}.")
        if name not in fields:
            fields.append(name)
    return fields


def tidy(text: str) -> str:
    """Collapse the spaces and commas that removing a word leaves behind."""
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r",\s*(?=[,.;:!?]|$)", "", text)
    return text.strip(" ,;:")


def remove_concept(template: str) -> str:
    """The default retain template: ``{concept}`` and one adjacent space removed (the paper's nudity rule)."""
    return tidy(template.replace("{concept} ", "").replace(" {concept}", "").replace("{concept}", ""))


def render(template: str, words: Mapping[str, str]) -> str:
    return template.format_map(words)


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
) -> tuple[PromptSet, PromptSet]:
    """Train and test prompt sets for erasing ``concept`` (Section 3.2, Appendix D).

    With the nudity preset and the defaults this has the shape of the paper's released files: 800 distinct train
    pairs, 100 distinct test pairs, and no prompt and no slot word shared between the two. ``narrow`` replaces the
    *train* set by the low-diversity baseline (see ``narrow_pairs``); the test set stays the diverse held-out one, so
    the ablation measures what narrow training costs on unseen prompts. Train and test draw from separate random
    streams, so changing ``train_count`` does not change the test prompts.
    """
    if not isinstance(concept, str) or not concept.strip():
        raise RGDInputError("concept is empty; give the word or name to erase, e.g. 'nudity' or 'Van Gogh'.")
    concept = " ".join(concept.split())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RGDInputError(f"seed must be a whole number, not {seed!r}.")
    if preset == "shapes":
        from .worlds.shapes_prompts import shape_prompt_sets

        return shape_prompt_sets(concept, train_count, test_count, seed, narrow)
    if custom is not None and preset != "custom":
        raise RGDInputError(f"a custom template was given with preset={preset!r}; pass preset='custom'.")
    if preset == "custom" and custom is None:
        raise RGDInputError("preset='custom' needs custom=CustomTemplate(template=..., slots=...).")
    words = concept_words_for(concept, preset, synonyms)
    if preset == "custom":
        spec = custom_preset(custom)
        check_no_concept_in_slots(spec, words)
    else:
        spec = builtin_preset(preset)
        spec = Preset(spec.name, spec.templates, without_concept_words(spec.train_slots, words),
                      without_concept_words(spec.test_slots, words), spec.narrow_template)

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
                            retain_prompts: Sequence[str] | None = None) -> tuple[PromptSet, PromptSet]:
    """(train, test) from what a host's user typed: the ComfyUI Prompt Set node, ``rgd unlearn`` and the tab all
    call this, so a setting means the same everywhere.

    ``preset`` is one of HOST_PRESETS. "custom" takes ``custom_template`` (with ``{concept}``) and ``custom_slots``
    lines ("place: in a park, at the beach"); "my lists" pairs ``forget_prompts[i]`` with ``retain_prompts[i]``
    and uses the same pairs for train and test.
    """
    if preset not in HOST_PRESETS:
        raise RGDInputError(f"prompt preset must be one of {', '.join(HOST_PRESETS)}, not {preset!r}.")
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
                             synonyms=words or None, custom=custom)


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

"""The PromptSet type (forget/retain prompt pairs of one split) and the checks every set must pass."""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

from rgd_core.errors import RGDInputError
from rgd_core.files import atomic_write_bytes

SPLITS = ("train", "test")
CONCEPT_FIELD = "concept"

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
    neighbours: tuple[str, ...] = ()  # concepts some retain prompts name instead of the concept (prompts.neighbours)
    # several concepts in one set (prompts.neighbours.combine): the concept each pair erases, so that the adaptive
    # stop can wait for every one of them; empty for a single concept
    pair_concepts: tuple[str, ...] = ()

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
        object.__setattr__(self, "neighbours", check_neighbours(self.neighbours, self.concept_words))
        object.__setattr__(self, "pair_concepts", tuple(self.pair_concepts))
        if self.pair_concepts and len(self.pair_concepts) != len(self.pairs):
            raise RGDInputError(f"PromptSet has {len(self.pair_concepts)} pair concepts for {len(self.pairs)} pairs; "
                                "give one concept per pair, or none.")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def forget_prompts(self) -> list[str]:
        return [forget for forget, _ in self.pairs]

    @property
    def retain_prompts(self) -> list[str]:
        return [retain for _, retain in self.pairs]

    def to_dict(self) -> dict:
        data = {
            "concept": self.concept,
            "preset": self.preset,
            "seed": self.seed,
            "split": self.split,
            "narrow": self.narrow,
            "concept_words": list(self.concept_words),
            "forget_prompts": self.forget_prompts,
            "retain_prompts": self.retain_prompts,
        }
        if self.neighbours:  # only when used, so that the digests of sets without neighbours stay what they were
            data["neighbours"] = list(self.neighbours)
        if self.pair_concepts:  # likewise: only sets of several concepts have them
            data["pair_concepts"] = list(self.pair_concepts)
        return data

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
            neighbours=tuple(data.get("neighbours") or ()),
            pair_concepts=tuple(data.get("pair_concepts") or ()),
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
        # Imported here: rgd_core.files pulls in torch, which the prompt logic itself never needs.

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


def concept_match(text: str, words: Sequence[str]) -> re.Match | None:
    """Where ``text`` first contains a concept word as a whole word (case-insensitive), or None."""
    return _word_pattern(tuple(words)).search(text) if words else None


def find_concept_word(text: str, words: Sequence[str]) -> str | None:
    """The first concept word that ``text`` contains as a whole word (case-insensitive), or None."""
    match = concept_match(text, words)
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


def check_neighbours(neighbours: Sequence[str], concept_words: Sequence[str]) -> tuple[str, ...]:
    """Neighbours stripped and de-duplicated, and checked: none may be empty or name a concept being erased."""
    checked: list[str] = []
    for neighbour in neighbours:
        word = " ".join(str(neighbour).split())
        if not word:
            raise RGDInputError("a neighbour is empty; remove it or give the word.")
        found = find_concept_word(word, concept_words)
        if found is not None:
            raise RGDInputError(f"neighbour {word!r} names the concept ({found!r}) being erased; a neighbour is what "
                                "must stay, give another.")
        if word.lower() not in {w.lower() for w in checked}:
            checked.append(word)
    return tuple(checked)


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

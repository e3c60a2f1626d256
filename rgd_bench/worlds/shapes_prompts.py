"""Forget/retain prompt sets for the shapes world, from a concept name (``shape_prompt_sets("striped")``).

The same recipe as the Stable Diffusion presets (Section 3.2, Appendix D), in the world's own phrasing:

* the concept is one attribute value, named by any of its synonyms: "striped"/"stripy" (a modifier, the analogue
  of "nude" or a style), "triangle"/"wedge" (a shape, the analogue of an object), or a colour;
* a forget prompt is ``shapes.caption`` of the concept plus every other attribute, in one of the six templates;
* its retain twin is the same caption with the concept taken out: a dropped modifier (which the world reads as
  plain), a dropped colour, or the generic word "shape"/"figure" in place of the shape;
* train and test prompts name the other attributes with disjoint words: train uses each value's first synonym
  ("red", "circle", "black", "plain"), test its second ("crimson", "disc", "dark", "solid"). The model learned both,
  so the test set is unseen phrasing of a known world, as the paper's test prompts are for SD.

``narrow`` replaces every retain prompt with one generic prompt ("a plain shape" / "a shape"), SalUn's
low-diversity retain set, keeping the diverse forget prompts so that the ablation changes only the retain side.
"""

from __future__ import annotations

import itertools
import random

from typing import Sequence

from rgd_bench.worlds import shapes
from rgd_core.errors import RGDInputError
from rgd_core.prompts import PromptSet, combine, with_neighbours
from rgd_core.prompts.neighbours import shares

PRESET = "shapes"
TRAIN_WORD, TEST_WORD = 0, 1  # which synonym of each slot value a split uses
SPLIT_WORD = {"train": TRAIN_WORD, "test": TEST_WORD}


def concept_attribute(concept: str) -> tuple[str, str]:
    """(attribute, value) that ``concept`` names, e.g. "stripy" -> ("modifier", "striped")."""
    word = " ".join(concept.lower().split())
    for name in shapes.ATTRIBUTES:
        for value, words in shapes.SYNONYMS[name].items():
            if word in words:
                if (name, value) == ("modifier", "plain"):
                    raise RGDInputError("'plain' is what a caption without a modifier means; erase a pattern instead.")
                if name == "background":
                    raise RGDInputError(f"{concept!r} is a background; erase a shape, colour or modifier.")
                return name, value
    known = [w for name in ("shape", "colour", "modifier") for v, ws in shapes.SYNONYMS[name].items()
             if v != "plain" for w in ws]
    raise RGDInputError(f"{concept!r} is not in the shapes world; use one of {', '.join(known)}.")


def _slot_values(attribute: str) -> dict[str, tuple]:
    """The values each other attribute takes in a prompt; the modifier may also be left out (meaning plain)."""
    slots = {}
    for name in shapes.ATTRIBUTES:
        if name == attribute:
            continue
        slots[name] = shapes.VALUES[name] + ((None,) if name == "modifier" else ())
    return slots


def _pair(attribute: str, value: str, others: dict, template: int, split: str, concept_word: int) -> tuple[str, str]:
    words = {name: SPLIT_WORD[split] for name in shapes.ATTRIBUTES}
    words[attribute] = concept_word
    forget = shapes.caption({**others, attribute: value}, template, words)
    removed = {name: index for name, index in words.items() if name != attribute}
    if attribute == "shape":  # the generic shape word is a slot word too: "shape" in train, "figure" in test
        removed["shape"] = SPLIT_WORD[split]
    return forget, shapes.caption({**others, attribute: None}, template, removed)


def all_pairs(concept: str, split: str, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Every distinct (forget, retain) pair of one split, in a fixed order; none names a value of ``exclude``
    (other concepts erased in the same run)."""
    attribute, value = concept_attribute(concept)
    slots = _slot_values(attribute)
    excluded = [concept_attribute(other) for other in exclude]
    concept_words = range(len(shapes.SYNONYMS[attribute][value]))
    pairs = []
    for combo in itertools.product(*slots.values()):
        others = dict(zip(slots, combo))
        if any(others.get(name) == kept_out for name, kept_out in excluded):
            continue
        for template in range(len(shapes.TEMPLATES)):
            for word in concept_words:
                pairs.append(_pair(attribute, value, others, template, split, word))
    return list(dict.fromkeys(pairs))


def generic_retain_prompt(concept: str) -> str:
    """SalUn-style single retain prompt: the concept's attribute at its neutral value, nothing else."""
    attribute, _ = concept_attribute(concept)
    return shapes.caption({"modifier": "plain"} if attribute == "modifier" else {}, 0)


def neighbour_words(concept: str, exclude: Sequence[str] = ()) -> list[str]:
    """The concept's neighbours, in the train split's words: the other values of its attribute (not "plain", and
    not a value of ``exclude``), what erasing it tends to take along and what the bench's collateral measures."""
    attribute, value = concept_attribute(concept)
    kept_out = {concept_attribute(other) for other in exclude}
    return [words[TRAIN_WORD] for other, words in shapes.SYNONYMS[attribute].items()
            if other not in (value, "plain") and (attribute, other) not in kept_out]


def shape_prompt_sets(
    concept: str, train_count: int = 256, test_count: int = 64, seed: int = 0, narrow: bool = False,
    exclude: Sequence[str] = (), neighbour_share: float = 0.0,
) -> tuple[PromptSet, PromptSet]:
    """(train, test) prompt sets for erasing ``concept`` from the shapes model; deterministic for ``seed``.
    ``exclude``: other concepts of the same run, named by no prompt; ``neighbour_share``: that share of the train
    twins names a neighbour instead (``rgd_core.prompts.with_neighbours`` over ``neighbour_words``)."""
    attribute, value = concept_attribute(concept)
    sets = []
    for split, count in (("train", train_count), ("test", test_count)):
        pool = all_pairs(concept, split, exclude)
        if not 1 <= count <= len(pool):
            raise RGDInputError(f"{split} count must be 1..{len(pool)} for {concept!r}, not {count}.")
        pairs = random.Random(f"{seed}:{split}").sample(pool, count)
        if narrow and split == "train":
            generic = generic_retain_prompt(concept)
            pairs = [(forget, generic) for forget, _ in pairs]
        sets.append(PromptSet(concept=value, preset=PRESET, seed=seed, pairs=tuple(pairs),
                              concept_words=shapes.SYNONYMS[attribute][value], split=split,
                              narrow=narrow and split == "train"))
    train = sets[0] if narrow else with_neighbours(sets[0], neighbour_words(concept, exclude), neighbour_share, seed)
    return train, sets[1]


def joint_prompt_sets(concepts: Sequence[str], train_count: int = 256, test_count: int = 64, seed: int = 0,
                      neighbour_share: float = 0.0) -> tuple[PromptSet, PromptSet]:
    """One (train, test) for erasing several concepts in one run: each concept's own sets (its share of the
    counts, the others kept out of its prompts and neighbours), interleaved (``rgd_core.prompts.combine``)."""
    sets = [shape_prompt_sets(concept, train, test, seed, exclude=[c for c in concepts if c != concept],
                              neighbour_share=neighbour_share)
            for concept, train, test in zip(concepts, shares(train_count, len(concepts)),
                                            shares(test_count, len(concepts)))]
    return combine([s[0] for s in sets]), combine([s[1] for s in sets])

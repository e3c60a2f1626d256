"""Neighbour-aware retain sets, and several concepts in one run.

Erasure spills onto what sits next to the concept: erasing one artist fades others of the period, erasing "striped"
takes "dotted" and "outlined" with it. A retain twin that only drops the concept ("a photo of a striped cat" ->
"a photo of a cat") says nothing about those neighbours. ``with_neighbours`` turns a share of the twins into the
forget prompt with the concept swapped for a neighbour ("a photo of a dotted cat"): the same scene, drawn from the
same noise when sampled, so the retain gradient holds exactly the nearby concepts erasure tends to take, and pair i
still contrasts the concept with something close to it.

Several concepts (``combine``): each concept's prompt set built with every other concept's words kept out of its
slots, the pairs interleaved so that every batch mixes the concepts, one shared retain set, and the concept words
of all of them, so no retain prompt (neighbours included) names any concept being erased.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

from rgd_core.errors import RGDInputError
from rgd_core.prompts.sets import PromptSet, check_neighbours, concept_match

# Neighbours each preset ships: what erasing its kind of concept tends to take along. The object preset has none:
# which objects neighbour "church" or "parachute" is the user's to say (--neighbours).
PRESET_NEIGHBOURS = {
    "nudity": ("clothed", "dressed", "swimsuit-wearing"),
    "art-style": ("Claude Monet", "Pablo Picasso", "Rembrandt", "Johannes Vermeer", "Salvador Dali", "Edvard Munch",
                  "Paul Cezanne", "Katsushika Hokusai", "Gustav Klimt", "Frida Kahlo"),
}
NEIGHBOUR_SHARE = 0.5  # share of the retain twins that name a neighbour instead of dropping the concept
CONCEPT_SEPARATOR = ";"


def split_concepts(text: str | Sequence[str]) -> list[str]:
    """Concepts from a ``;``-separated text (or a list of them), stripped, empty ones and repeats dropped."""
    parts = text.split(CONCEPT_SEPARATOR) if isinstance(text, str) else [str(part) for part in text]
    concepts: list[str] = []
    for part in parts:
        name = " ".join(part.split())
        if name and name.lower() not in {c.lower() for c in concepts}:
            concepts.append(name)
    return concepts


def swap_concept(prompt: str, words: Sequence[str], neighbour: str) -> str:
    """``prompt`` with its first concept word replaced by ``neighbour`` (capitalised like it), and an "a"/"an"
    right before it made to fit the neighbour."""
    match = concept_match(prompt, words)
    if match is None:
        raise RGDInputError(f"forget prompt {prompt!r} names no concept word to swap for a neighbour.")
    word = neighbour[0].upper() + neighbour[1:] if match.group(0)[0].isupper() else neighbour
    before = prompt[: match.start()]
    article = re.search(r"(?<!\w)(a|an|A|An) $", before)
    if article:
        fitting = "an" if word[0].lower() in "aeiou" else "a"
        fitting = fitting.capitalize() if article.group(1)[0].isupper() else fitting
        before = before[: article.start(1)] + fitting + " "
    return before + word + prompt[match.end():]


def with_neighbours(prompt_set: PromptSet, neighbours: Sequence[str], share: float = NEIGHBOUR_SHARE,
                    seed: int = 0) -> PromptSet:
    """``prompt_set`` with a seeded ``share`` of its retain twins replaced by the forget prompt naming a neighbour
    instead of the concept (the neighbours taken in turn). The forget prompts, their order and the other twins are
    kept, so the data stay paired; with no neighbours or a share of 0 the set is returned as it is."""
    if not 0.0 <= share <= 1.0:
        raise RGDInputError(f"the neighbour share must be between 0 and 1, not {share}.")
    neighbours = check_neighbours(neighbours, prompt_set.concept_words)
    count = round(share * len(prompt_set))
    if not neighbours or not count:
        return prompt_set
    chosen = sorted(random.Random(f"{seed}:neighbours").sample(range(len(prompt_set)), count))
    pairs = list(prompt_set.pairs)
    for turn, index in enumerate(chosen):
        forget = pairs[index][0]
        pairs[index] = (forget, swap_concept(forget, prompt_set.concept_words, neighbours[turn % len(neighbours)]))
    return dataclasses.replace(prompt_set, pairs=tuple(pairs), neighbours=neighbours)


def combine(sets: Sequence[PromptSet]) -> PromptSet:
    """One prompt set for several concepts: pairs interleaved (first of each, then second of each, ...), the
    concepts joined with "; ", every concept's words, so a retain prompt naming any of them is refused, and the
    concept each pair erases (``pair_concepts``)."""
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise RGDInputError("no concepts to combine; give at least one.")
    pairs, pair_concepts = [], []
    for row in range(max(len(s) for s in sets)):
        pairs += [s.pairs[row] for s in sets if row < len(s)]
        pair_concepts += [s.concept for s in sets if row < len(s)]
    words = tuple(dict.fromkeys(word for s in sets for word in s.concept_words))
    neighbours = tuple(dict.fromkeys(word for s in sets for word in s.neighbours))
    first = sets[0]
    return PromptSet(concept=f"{CONCEPT_SEPARATOR} ".join(s.concept for s in sets), preset=first.preset,
                     seed=first.seed, pairs=tuple(pairs), concept_words=words, split=first.split,
                     narrow=first.narrow, neighbours=neighbours, pair_concepts=tuple(pair_concepts))


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole counts (the first ones one larger), each at least 1."""
    base, extra = divmod(total, parts)
    return [max(1, base + (i < extra)) for i in range(parts)]

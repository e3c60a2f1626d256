"""Prompt sets of the shapes world: built from a concept name by shape_prompt_sets, twins, disjoint splits."""

import re

import pytest

from rgd_core.errors import RGDInputError
from rgd_core.prompts import PromptSet
from rgd_bench.worlds import shapes
from rgd_bench.worlds.shapes_prompts import all_pairs, concept_attribute, generic_retain_prompt, shape_prompt_sets


@pytest.mark.parametrize("concept, attribute, value", [("striped", "modifier", "striped"),
                                                       ("wedge", "shape", "triangle"), ("azure", "colour", "blue")])
def test_forget_prompts_name_the_concept_and_twins_drop_only_it(concept, attribute, value):
    assert concept_attribute(concept) == (attribute, value)
    train, test = shape_prompt_sets(concept, 200, 50, seed=3)
    assert isinstance(train, PromptSet) and (len(train), len(test)) == (200, 50)
    neutral = "plain" if attribute == "modifier" else None
    for forget, retain in train.pairs + test.pairs:
        asked, kept = shapes.parse_caption(forget), shapes.parse_caption(retain)
        assert asked[attribute] == value
        assert kept == {**asked, attribute: neutral}


def test_train_and_test_use_disjoint_slot_words():
    train, test = shape_prompt_sets("striped", 300, 100, seed=0)

    def words(prompt_set):
        return {w for p in prompt_set.forget_prompts + prompt_set.retain_prompts for w in re.findall(r"[a-z]+", p)}

    slot_words = {w for name in ("shape", "colour", "background") for ws in shapes.SYNONYMS[name].values()
                  for w in ws} | set(shapes.GENERIC_SHAPE_WORDS) | {"plain", "solid"}
    shared = words(train) & words(test) & slot_words
    assert not shared
    assert not set(train.pairs) & set(test.pairs)


def test_deterministic_for_a_seed_and_different_across_seeds():
    first = shape_prompt_sets("triangle", 64, 16, seed=1)
    assert first == shape_prompt_sets("triangle", 64, 16, seed=1)
    assert first[0].pairs != shape_prompt_sets("triangle", 64, 16, seed=2)[0].pairs


def test_narrow_keeps_forget_prompts_and_one_generic_retain_prompt():
    diverse, _ = shape_prompt_sets("striped", 32, 8, seed=0)
    narrow, test = shape_prompt_sets("striped", 32, 8, seed=0, narrow=True)
    assert narrow.forget_prompts == diverse.forget_prompts
    assert set(narrow.retain_prompts) == {generic_retain_prompt("striped")} == {"a plain shape"}
    assert narrow.narrow and not test.narrow


def test_bad_concepts_and_counts():
    with pytest.raises(RGDInputError, match="not in the shapes world"):
        shape_prompt_sets("nudity")
    with pytest.raises(RGDInputError, match="plain"):
        shape_prompt_sets("plain")
    with pytest.raises(RGDInputError, match="1..576"):
        shape_prompt_sets("striped", 577, 10)
    assert len(all_pairs("striped", "train")) == 576

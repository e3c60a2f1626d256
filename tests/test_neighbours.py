"""Neighbour-aware retain sets and several concepts in one run: the prompt-level mechanisms, in every world."""

import pytest

from rgd_bench.worlds.shapes_prompts import joint_prompt_sets, neighbour_words, shape_prompt_sets
from rgd_core.errors import RGDInputError
from rgd_core.prompts import (
    PRESET_NEIGHBOURS,
    build_prompt_sets,
    find_concept_word,
    prompt_sets_from_inputs,
    split_concepts,
    swap_concept,
    with_neighbours,
)


def neighbour_twins(prompt_set, neighbours):
    return [retain for _, retain in prompt_set.pairs if find_concept_word(retain, neighbours)]


@pytest.mark.parametrize("concept, preset", [("nudity", "nudity"), ("Van Gogh", "art-style")])
def test_preset_neighbours_replace_a_share_of_twins_and_never_name_the_concept(concept, preset):
    plain, _ = build_prompt_sets(concept, preset, train_count=40, test_count=4, seed=3)
    train, test = prompt_sets_from_inputs(concept, preset, 40, 4, 3)
    neighbours = PRESET_NEIGHBOURS[preset]
    assert train.forget_prompts == plain.forget_prompts  # same forget prompts, same order: still paired
    swapped = neighbour_twins(train, neighbours)
    assert len(swapped) == 20 and train.neighbours == neighbours
    for forget, retain in train.pairs:
        assert find_concept_word(retain, train.concept_words) is None
    for (forget, retain), (_, twin) in zip(train.pairs, plain.pairs):
        # a neighbour twin is the forget prompt with the concept swapped, the others are the plain twins
        assert retain == twin or retain == swap_concept(forget, train.concept_words, find_concept_word(
            retain, neighbours))
    assert not neighbour_twins(test, neighbours)  # the test set keeps plain twins: it measures the same thing
    again, _ = prompt_sets_from_inputs(concept, preset, 40, 4, 3)
    assert again == train  # seeded


def test_users_neighbours_and_share_and_refusals():
    train, _ = prompt_sets_from_inputs("church", "object", 20, 4, 0, neighbours="mosque, temple",
                                       neighbour_share=0.25)
    assert len(neighbour_twins(train, ("mosque", "temple"))) == 5
    plain, _ = prompt_sets_from_inputs("church", "object", 20, 4, 0)  # the object preset ships no neighbours
    assert plain.neighbours == ()
    off, _ = prompt_sets_from_inputs("nudity", "nudity", 20, 4, 0, neighbour_share=0.0)
    assert off.neighbours == () and not neighbour_twins(off, PRESET_NEIGHBOURS["nudity"])
    with pytest.raises(RGDInputError, match="names the concept"):
        prompt_sets_from_inputs("church", "object", 20, 4, 0, neighbours="old church")
    with pytest.raises(RGDInputError, match="between 0 and 1"):
        prompt_sets_from_inputs("church", "object", 20, 4, 0, neighbours="mosque", neighbour_share=1.5)


def test_swapping_keeps_case_and_fixes_the_article():
    assert swap_concept("a striped red square", ["striped"], "outlined") == "an outlined red square"
    assert swap_concept("An apple on a table", ["apple"], "pear") == "A pear on a table"
    assert swap_concept("Nude person at dawn", ["nude"], "clothed") == "Clothed person at dawn"


def test_several_concepts_share_one_set_and_no_retain_prompt_names_any():
    assert split_concepts(" Van Gogh ; Monet;;van gogh ") == ["Van Gogh", "Monet"]
    train, test = prompt_sets_from_inputs("Van Gogh; Monet", "art-style", 30, 6, 1)
    assert train.concept == "Van Gogh; Monet" and len(train) == 30 and len(test) == 6
    names = [find_concept_word(forget, ("Van Gogh", "Monet")) for forget in train.forget_prompts]
    assert names[:4] == ["Van Gogh", "Monet", "Van Gogh", "Monet"]  # interleaved: every batch mixes them
    # the preset's neighbour "Claude Monet" names a concept of this run: it is left out, not used
    assert all("Monet" not in neighbour for neighbour in train.neighbours) and train.neighbours
    for _, retain in train.pairs + test.pairs:
        assert find_concept_word(retain, ("Van Gogh", "Monet")) is None
    with pytest.raises(RGDInputError, match="synonyms with several concepts"):
        prompt_sets_from_inputs("Van Gogh; Monet", "art-style", 30, 6, 1, synonyms="Vincent")


def test_shapes_neighbours_are_the_concepts_siblings_and_joint_sets_keep_the_others_out():
    assert neighbour_words("striped") == ["dotted", "outlined"]
    assert neighbour_words("triangle", exclude=["square"]) == ["circle", "diamond"]
    train, _ = shape_prompt_sets("striped", 64, 8, seed=0, neighbour_share=0.5)
    assert len(neighbour_twins(train, ("dotted", "outlined"))) == 32
    joint, test = joint_prompt_sets(["striped", "triangle"], 64, 16, seed=0, neighbour_share=0.5)
    words = ("striped", "stripy", "triangle", "wedge")
    assert len(joint) == 64 and set(joint.concept_words) == set(words)
    for forget, retain in joint.pairs + test.pairs:
        assert find_concept_word(forget, words) and find_concept_word(retain, words) is None
    assert {"dotted", "circle"} <= set(joint.neighbours)


def test_a_set_of_several_concepts_knows_which_concept_each_pair_erases():
    train, test = prompt_sets_from_inputs("Van Gogh; Monet", "art-style", train_count=20, test_count=6, seed=0)
    for prompt_set in (train, test):  # the train set went through with_neighbours too and kept them
        assert len(prompt_set.pair_concepts) == len(prompt_set)
        for (forget, _), concept in zip(prompt_set.pairs, prompt_set.pair_concepts):
            assert find_concept_word(forget, [concept])
            other = "Monet" if concept == "Van Gogh" else "Van Gogh"
            assert find_concept_word(forget, [other]) is None
    again = type(train).from_json(train.to_json())
    assert again == train and again.digest() == train.digest()
    single, _ = prompt_sets_from_inputs("Van Gogh", "art-style", train_count=20, test_count=6, seed=0)
    assert single.pair_concepts == () and "pair_concepts" not in single.to_dict()  # old digests unchanged
    joint, _ = joint_prompt_sets(["striped", "red"], 16, 4, seed=0, neighbour_share=0.5)
    assert set(joint.pair_concepts) == {"striped", "red"}
    with pytest.raises(RGDInputError, match="one concept per pair"):
        type(train)(concept="a", preset="custom", seed=0, pairs=(("a cat", "cat"),), pair_concepts=("a", "a"))

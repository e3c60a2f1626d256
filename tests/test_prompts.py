import json
import re

import pytest

from rgd_core.errors import RGDInputError
from rgd_core.prompts import (
    NUDITY_NARROW,
    NUDITY_TEMPLATE,
    NUDITY_TEST_SLOTS,
    NUDITY_TRAIN_SLOTS,
    NUDITY_WORDS,
    CustomTemplate,
    PromptSet,
    build_prompt_sets,
    builtin_preset,
    check_disjoint_vocabularies,
    unique_pair_count,
)

# Written out from docs/method.md section 3, not imported, so the test catches a drifting constant.
PAPER_TRAIN = {
    "emotion": ["contemplative", "joyful", "energetic", "peaceful", "tense", "anxious", "relaxed"],
    "activity": ["sitting", "dancing", "walking", "cooking", "meditating", "standing", "reading", "jogging"],
    "location": ["on a rooftop", "in a bustling city street", "in a cozy room", "in a forest", "in a crowded market",
                 "at a quiet beach", "by the lake", "in lush green mountains"],
    "time": ["in the afternoon", "at midnight", "as the sun rises", "during the morning", "under the moonlight",
             "at sunset", "at dawn"],
}
PAPER_TEST = {
    "emotion": ["melancholic", "excited", "hopeful", "disillusioned"],
    "activity": ["painting", "playing guitar", "sketching", "shopping"],
    "location": ["in a bright, airy studio", "on a snowy mountain", "in a desert", "in an urban park"],
    "time": ["early evening", "late night", "at noon", "during twilight"],
}
DANGLING = re.compile(r"\b(by|of|in the style|in the style of|a|an|the|with)\s*([,.]|$)", re.IGNORECASE)

ANIMAL = {
    "template": "a photo of a {concept} in {place} {time}",
    "slots": {"place": ["a park", "a garden", "a kitchen"], "time": ["at dawn", "at night"]},
    "test_slots": {"place": ["a car"], "time": ["at noon"]},
    "retain_template": "a photo of {place} {time}",
}


@pytest.fixture(scope="module")
def nudity():
    return build_prompt_sets("nudity")


def nudity_pattern(slots):
    alt = lambda words: "|".join(map(re.escape, words))
    return re.compile(
        rf"A ({alt(slots['emotion'])}) ({alt(NUDITY_WORDS)}) person ({alt(slots['activity'])}) "
        rf"({alt(slots['location'])}) ({alt(slots['time'])})\."
    )


def assert_fluent_and_concept_free(prompt_set, words):
    for forget, retain in prompt_set.pairs:
        assert any(re.search(rf"\b{re.escape(w)}\b", forget, re.IGNORECASE) for w in words), forget
        assert not any(re.search(rf"\b{re.escape(w)}\b", retain, re.IGNORECASE) for w in words), retain
        assert "  " not in retain and retain == retain.strip() and not DANGLING.search(retain), retain
        assert "style of" not in retain and " by " not in retain and " ," not in retain, retain


def test_nudity_constants_are_the_papers():
    assert NUDITY_TEMPLATE == "A {emotion} {concept} person {activity} {location} {time}."
    assert NUDITY_WORDS == ("naked", "nude", "bare", "unclad", "undressed")
    assert {k: list(v) for k, v in NUDITY_TRAIN_SLOTS.items()} == PAPER_TRAIN
    assert {k: list(v) for k, v in NUDITY_TEST_SLOTS.items()} == PAPER_TEST
    assert unique_pair_count(builtin_preset("nudity"), "train") == 7 * 8 * 8 * 7
    assert unique_pair_count(builtin_preset("nudity"), "test") == 4**4


def test_nudity_shape_matches_the_released_files(nudity):
    train, test = nudity
    assert (len(train), len(test)) == (800, 100)
    for prompt_set in (train, test):
        assert len(set(prompt_set.forget_prompts)) == len(prompt_set)
        assert len(set(prompt_set.retain_prompts)) == len(prompt_set)
    assert not set(train.forget_prompts + train.retain_prompts) & set(test.forget_prompts + test.retain_prompts)
    assert (train.split, test.split, train.preset, train.concept) == ("train", "test", "nudity", "nudity")
    assert train.concept_words == NUDITY_WORDS


def test_nudity_prompts_follow_the_template_and_their_split_vocabulary(nudity):
    train, test = nudity
    for prompt_set, slots in ((train, PAPER_TRAIN), (test, PAPER_TEST)):
        pattern = nudity_pattern(slots)
        assert all(pattern.fullmatch(forget) for forget in prompt_set.forget_prompts)
    # every nudity word is used, and "A" is kept even before a vowel, as in the paper's files
    assert {re.match(r"A \S+ (\w+)", f).group(1) for f in train.forget_prompts} == set(NUDITY_WORDS)
    assert any(f.startswith("A energetic ") or f.startswith("A anxious ") for f in train.forget_prompts)


def test_retain_is_forget_minus_the_concept_word(nudity):
    for prompt_set in nudity:
        for forget, retain in prompt_set.pairs:
            assert [w for w in NUDITY_WORDS if forget.replace(f" {w} ", " ", 1) == retain] != [], (forget, retain)
            assert len(forget.split()) == len(retain.split()) + 1


def test_builtin_vocabularies_are_disjoint_between_splits():
    for name in ("nudity", "art-style", "object"):
        preset = builtin_preset(name)
        check_disjoint_vocabularies(preset.train_slots, preset.test_slots)
        train_words = {w for ws in preset.train_slots.values() for w in ws}
        assert not train_words & {w for ws in preset.test_slots.values() for w in ws}


def test_same_seed_same_prompts_other_seed_other_prompts(nudity):
    again = build_prompt_sets("nudity", seed=0)
    other = build_prompt_sets("nudity", seed=1)
    assert again[0].pairs == nudity[0].pairs and again[1].pairs == nudity[1].pairs
    assert set(other[0].pairs) != set(nudity[0].pairs) and set(other[1].pairs) != set(nudity[1].pairs)
    assert again[0].digest() == nudity[0].digest() != other[0].digest()


def test_train_count_does_not_change_the_test_prompts(nudity):
    assert build_prompt_sets("nudity", train_count=50)[1].pairs == nudity[1].pairs


def test_json_round_trip_and_digest(nudity, tmp_path):
    train, _ = nudity
    restored = PromptSet.from_json(train.to_json())
    assert restored == train and restored.digest() == train.digest()
    assert PromptSet.from_json(train.to_json(indent=None)).digest() == train.digest()
    path = train.save(tmp_path / "sub" / "train.json")
    assert PromptSet.load(path) == train
    assert json.loads(path.read_text())["forget_prompts"] == train.forget_prompts
    assert len(train.digest()) == 64 and train.digest() != nudity[1].digest()
    assert not list(path.parent.glob("*.tmp"))


def test_count_larger_than_the_combinations_names_the_maximum():
    with pytest.raises(RGDInputError, match="at most 3136"):
        build_prompt_sets("nudity", train_count=3137)
    with pytest.raises(RGDInputError, match="at most 256"):
        build_prompt_sets("nudity", test_count=257)
    assert len(build_prompt_sets("nudity", train_count=3136, test_count=256)[0]) == 3136


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(concept=""),
        dict(concept="   "),
        dict(concept="nudity", train_count=0),
        dict(concept="nudity", test_count=-1),
        dict(concept="nudity", train_count=2.5),
        dict(concept="nudity", seed="0"),
        dict(concept="nudity", preset="landscape"),
        dict(concept="nudity", synonyms=[""]),
        dict(concept="dog", preset="custom"),
        dict(concept="dog", custom=ANIMAL),
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(RGDInputError):
        build_prompt_sets(**kwargs)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(template="a photo of a dog in {place} {time}", retain_template=None), "no {concept}"),
        (dict(slots={"place": [], "time": ["at dawn"]}), "empty"),
        (dict(slots={"place": ["a park"]}), "missing"),
        (dict(test_slots={"place": ["a park"], "time": ["at noon"]}), "share 'a park'"),
        (dict(test_slots={"place": ["a car"]}), "differ"),
        (dict(retain_template="a photo of a dog in {place} {time}"), "still contains the concept word"),
        (dict(slots={"place": ["a dog park", "a garden"], "time": ["at dawn"]}), "contains the concept"),
        (dict(retain_template="a photo of {place} {time} by"), "ends a clause"),
        (dict(retain_template="a photo of {concept}"), "contains {concept}"),
        (dict(slots={"place": ["a park", "a park"], "time": ["at dawn"]}), "repeats"),
    ],
)
def test_bad_custom_templates_raise(change, message):
    with pytest.raises(RGDInputError, match=re.escape(message)):
        build_prompt_sets("dog", preset="custom", custom={**ANIMAL, **change}, train_count=2, test_count=1)


def test_bad_json_raises(nudity, tmp_path):
    data = json.loads(nudity[1].to_json())
    data["retain_prompts"].pop()
    with pytest.raises(RGDInputError, match="100 forget prompts but 99 retain"):
        PromptSet.from_json(json.dumps(data))
    data = json.loads(nudity[1].to_json())
    data["retain_prompts"][0] = data["forget_prompts"][0]
    with pytest.raises(RGDInputError, match="still contains"):
        PromptSet.from_json(json.dumps(data))
    data = json.loads(nudity[1].to_json())
    data["forget_prompts"][0] = data["retain_prompts"][0]
    with pytest.raises(RGDInputError, match="does not contain the concept"):
        PromptSet.from_json(json.dumps(data))
    with pytest.raises(RGDInputError, match="not valid JSON"):
        PromptSet.from_json("{")
    with pytest.raises(RGDInputError, match="does not exist"):
        PromptSet.load(tmp_path / "missing.json")


def test_art_style_retain_drops_the_style_phrase():
    words = ("Van Gogh", "Vincent van Gogh")
    train, test = build_prompt_sets("Van Gogh", preset="art-style", synonyms=["Vincent van Gogh"], seed=3)
    assert (len(train), len(test)) == (800, 100)
    for prompt_set in (train, test):
        assert_fluent_and_concept_free(prompt_set, words)
    forgets = train.forget_prompts
    assert any("in the style of Vincent van Gogh" in f for f in forgets)
    assert any(f.endswith("by Van Gogh") for f in forgets)
    for forget, retain in train.pairs:
        for word in words:
            forget = forget.replace(f", in the style of {word}", "").replace(f" by {word}", "")
        assert forget == retain
    assert not set(train.retain_prompts) & set(test.retain_prompts)


def test_object_retain_drops_the_object_phrase():
    train, test = build_prompt_sets("apple", preset="object", seed=5)
    for prompt_set in (train, test):
        assert_fluent_and_concept_free(prompt_set, ["apple"])
        for forget, retain in prompt_set.pairs:
            # the scene survives word for word: retain is forget minus "a <adjective> apple" (and its glue)
            assert set(retain.split()) <= set(forget.replace(",", "").split())
            assert not re.search(r"\ban? (an?|the)\b", retain)
    assert not set(train.forget_prompts) & set(test.forget_prompts)


def test_object_preset_drops_slot_words_that_name_the_concept():
    train, test = build_prompt_sets("garden", preset="object")
    assert not any("garden" in r for r in train.retain_prompts + test.retain_prompts)


def test_custom_template_and_default_test_split():
    custom = CustomTemplate(
        template="a {mood} {concept} {place}",
        slots={"mood": ["happy", "sad", "calm", "sleepy"], "place": ["in a park", "on a beach", "at home", "in a car"]},
    )
    train, test = build_prompt_sets("dog", preset="custom", custom=custom, synonyms=["puppy"], train_count=9,
                                     test_count=1, seed=2)
    assert (len(train), len(test)) == (9, 1)
    assert set(test.retain_prompts) == {"a sleepy in a car"}
    assert all(f.replace("dog ", "").replace("puppy ", "") == r for f, r in train.pairs)
    assert {f.split()[2] for f in train.forget_prompts} <= {"dog", "puppy"}
    with pytest.raises(RGDInputError, match="at most 9"):
        build_prompt_sets("dog", preset="custom", custom=custom, train_count=10, test_count=1)


def test_custom_template_with_explicit_lists_and_retain_template():
    train, test = build_prompt_sets("dog", preset="custom", custom=ANIMAL, train_count=6, test_count=1)
    assert set(train.retain_prompts) == {f"a photo of {p} {t}" for p in ANIMAL["slots"]["place"]
                                         for t in ANIMAL["slots"]["time"]}
    assert test.pairs == (("a photo of a dog in a car at noon", "a photo of a car at noon"),)
    assert_fluent_and_concept_free(train, ["dog"])


def test_narrow_mode_is_a_single_retain_prompt():
    narrow_train, narrow_test = build_prompt_sets("nudity", narrow=True)
    diverse_train, diverse_test = build_prompt_sets("nudity")
    assert len(narrow_train) == 800 and narrow_train.narrow and not narrow_test.narrow
    assert set(narrow_train.retain_prompts) == {NUDITY_NARROW[1]} == {"a photo of a person wearing clothes"}
    assert set(narrow_train.forget_prompts) == {f"a photo of a {w} person" for w in NUDITY_WORDS}
    assert len(set(diverse_train.retain_prompts)) >= 100 * len(set(narrow_train.retain_prompts))
    assert narrow_test.pairs == diverse_test.pairs  # the held-out evaluation is the same for the ablation
    assert narrow_train.digest() != diverse_train.digest()
    for preset, concept in (("art-style", "Monet"), ("object", "church")):
        narrow, _ = build_prompt_sets(concept, preset=preset, narrow=True, train_count=40)
        diverse, _ = build_prompt_sets(concept, preset=preset, train_count=40)
        assert len(set(narrow.retain_prompts)) == 1 < len(set(diverse.retain_prompts)) == 40
        assert_fluent_and_concept_free(narrow, [concept])

"""The shapes world: deterministic renders whose attributes are visible, captions that say what the image shows,
and the committed attribute classifier that reads them back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rgd_core.errors import RGDInputError
from rgd_bench.worlds import shapes
from rgd_bench.worlds.shapes import Attributes


def _coloured_share(image: np.ndarray, background: str) -> float:
    """Share of pixels that differ clearly from the background colour."""
    distance = np.abs(image.astype(int) - np.array(shapes.BACKGROUND_RGB[background])).sum(-1)
    return float(np.mean(distance > 60))


def test_render_is_deterministic_per_seed_and_varies_between_seeds():
    attributes = shapes.random_attributes(np.random.default_rng(0), 16)
    first, again = shapes.render_batch(attributes, seed=3), shapes.render_batch(attributes, seed=3)
    assert first.shape == (16, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, shapes.render_batch(attributes, seed=4))
    assert shapes.random_attributes(np.random.default_rng(0), 16) == attributes


def test_colour_and_background_are_what_the_attributes_say():
    for colour, background in itertools.product(shapes.COLOURS, shapes.BACKGROUNDS):
        image = shapes.render(Attributes("square", colour, background, "plain"), np.random.default_rng(1))
        corner = image[0, 0].astype(int)
        assert np.abs(corner - np.array(shapes.BACKGROUND_RGB[background])).max() <= shapes.COLOUR_JITTER
        centre = image[7:9, 7:9].reshape(-1, 3).astype(int)  # every square covers the middle of the image
        assert np.abs(centre - np.array(shapes.COLOUR_RGB[colour])).max() <= shapes.COLOUR_JITTER


def test_modifiers_are_visibly_distinct():
    # One seed gives the same size, position and phase whatever the attributes, so only the modifier changes.
    shares = {}
    for modifier in shapes.MODIFIERS:
        image = shapes.render(Attributes("square", "red", "black", modifier), np.random.default_rng(7))
        shares[modifier] = _coloured_share(image, "black")
        rows = (np.abs(image.astype(int) - shapes.BACKGROUND_RGB["black"]).sum(-1) > 60).sum(1)
        if modifier == "striped":  # whole rows of the square show the background
            covered = np.flatnonzero(rows)
            assert (rows[covered[0] : covered[-1]] == 0).sum() >= 3
    assert shares["plain"] > shares["dotted"] > shares["striped"] > shares["outlined"] > 0.05
    assert shares["dotted"] < 0.95 * shares["plain"]
    assert shares["outlined"] < 0.6 * shares["plain"]


def test_dotted_spots_are_two_by_two_and_keep_the_silhouette():
    for shape in shapes.SHAPES:
        mask = shapes.shape_mask(shape, 12, 2, 2)
        dotted = shapes.pattern_mask(mask, "dotted", (-2, -2))
        border = mask & ~shapes.interior(mask)
        assert (dotted[border]).all(), shape  # every border pixel keeps the colour
        spots = mask & ~dotted
        assert spots.sum() >= 4, shape
    square_spots = ~shapes.pattern_mask(shapes.shape_mask("square", 12, 2, 2), "dotted", (-2, -2))[2:14, 2:14]
    # A 12-pixel square holds a 3x3 grid of whole 2x2 spots, rows and columns 1-2, 5-6, 9-10 of the square.
    expected = np.zeros((12, 12), bool)
    for top in (1, 5, 9):
        for left in (1, 5, 9):
            expected[top : top + 2, left : left + 2] = True
    assert (square_spots == expected).all()


def test_shapes_differ_at_the_same_size_and_place():
    masks = {shape: shapes.shape_mask(shape, 12, 2, 2) for shape in shapes.SHAPES}
    for a, b in itertools.combinations(shapes.SHAPES, 2):
        assert (masks[a] != masks[b]).sum() >= 10, (a, b)
    area = {shape: mask.sum() for shape, mask in masks.items()}
    assert area["square"] == 144 and area["square"] > area["circle"] > area["diamond"]
    assert masks["triangle"][-3].sum() > masks["triangle"][3].sum()  # apex up


def test_every_template_and_synonym_round_trips():
    for attributes in (Attributes("triangle", "yellow", "gray", "outlined"), Attributes("circle", "red", "white",
                                                                                       "striped")):
        counts = shapes.synonym_counts(attributes)
        seen = set()
        for template in range(len(shapes.TEMPLATES)):
            for choice in itertools.product(*(range(counts[name]) for name in shapes.ATTRIBUTES)):
                text = shapes.caption(attributes, template, dict(zip(shapes.ATTRIBUTES, choice)))
                assert shapes.parse_caption(text) == attributes.as_dict(), text
                assert "  " not in text and " ," not in text and not text.endswith(",")
                seen.add(text)
        assert len(seen) == len(shapes.TEMPLATES) * int(np.prod(list(counts.values())))


def test_every_synonym_names_one_value():
    words = [w for name in shapes.ATTRIBUTES for ws in shapes.SYNONYMS[name].values() for w in ws]
    assert len(words) == len(set(words))
    assert set(shapes.GENERIC_SHAPE_WORDS).isdisjoint(words)
    for name in shapes.ATTRIBUTES:
        assert set(shapes.SYNONYMS[name]) == set(shapes.VALUES[name])


def test_left_out_attributes_vanish_from_the_caption():
    free = {"shape": None, "colour": "blue", "background": None, "modifier": None}
    for template in range(len(shapes.TEMPLATES)):
        text = shapes.caption(free, template)
        assert "blue" in text and "shape" in text and "background" not in text and "backdrop" not in text
        assert shapes.parse_caption(text) == {"shape": None, "colour": "blue", "background": None,
                                              "modifier": "plain"}
    assert shapes.caption(Attributes("circle", "red", "black", "outlined")).startswith("an outlined")
    retain_twin = shapes.caption({"shape": "triangle", "colour": "red", "background": "black", "modifier": None})
    assert retain_twin == "a red triangle on a black background"


def test_bad_caption_input_is_refused():
    with pytest.raises(RGDInputError):
        shapes.caption(Attributes("circle", "red", "black", "plain"), template=len(shapes.TEMPLATES))
    with pytest.raises(RGDInputError):
        shapes.caption({"shape": "hexagon", "colour": "red", "background": "black", "modifier": "plain"})
    with pytest.raises(RGDInputError):
        shapes.caption(Attributes("circle", "red", "black", "plain"), synonyms={"colour": 5})
    with pytest.raises(RGDInputError):
        Attributes("circle", "purple", "black", "plain")


def test_training_batches_are_fresh_deterministic_and_keep_test_phrasings_out():
    images, captions = shapes.training_batch(seed=0, step=5, batch_size=200)
    again, captions_again = shapes.training_batch(seed=0, step=5, batch_size=200)
    assert images.shape == (200, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) and images.dtype.is_floating_point
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert (images == again).all() and captions == captions_again
    assert 5 <= captions.count("") <= 40  # 10% dropout for classifier-free guidance
    assert not (images == shapes.training_batch(seed=0, step=6, batch_size=200)[0]).all()

    attributes, template = shapes.held_out_pairs()[0]
    counts = shapes.synonym_counts(attributes)
    held_out = {shapes.caption(attributes, template, dict(zip(shapes.ATTRIBUTES, choice)))
                for choice in itertools.product(*(range(counts[n]) for n in shapes.ATTRIBUTES))}
    rng = np.random.default_rng(0)
    drawn = {shapes.random_caption(attributes, rng, omit=False) for _ in range(300)}
    assert len(drawn) > 20 and drawn.isdisjoint(held_out)


def test_held_out_pairs_leave_every_combination_trainable():
    pairs = shapes.held_out_pairs()
    assert 80 <= len(pairs) <= 200
    assert {t for _, t in pairs} == set(range(len(shapes.TEMPLATES)))
    per_combination = {}
    for attributes, _ in pairs:
        per_combination[attributes] = per_combination.get(attributes, 0) + 1
    assert max(per_combination.values()) <= len(shapes.TEMPLATES) - 2


def test_committed_classifier_reads_fresh_renders():
    from rgd_bench.shapes_classifier import FEATURE_DIM, held_out_accuracy, load_classifier

    classifier = load_classifier()
    accuracy = held_out_accuracy(classifier, count=400, seed=99)
    assert min(accuracy.values()) >= 0.95, accuracy
    images = shapes.render_batch(shapes.random_attributes(np.random.default_rng(1), 8), seed=1)
    features = classifier.features(images)
    assert features.shape == (8, FEATURE_DIM) and np.isfinite(features).all()
    with pytest.raises(RGDInputError):
        classifier.predict(images.astype(np.float32))

"""A reduced run of the digits demo: real forgetting of a real (small) diffusion model, offline.

The demo's own training settings (60 steps) and evaluation (20 DDIM steps), judged on 50 samples a digit. Fewer
samples would not keep the per-digit check honest: with 30 a digit, one digit's drop already measured 0.10 (3
samples), at the bar. The cost is kept down instead by one torch thread (three training steps took 1.5 s on one
thread against 16 s on two while other jobs shared the 2 cores) and by one set of original samples shared by the
module's tests.
"""

import numpy as np
import pytest
import torch

from rgd_bench.class_forgetting import ClassForgettingConfig, EvalConfig, Evaluator, ModelSamples, run_forgetting, score
from rgd_bench.class_metrics import NOT_A_DIGIT
from rgd_bench.worlds import digits

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator.build(EvalConfig(samples_per_class=50))


@pytest.fixture(scope="module")
def base():
    return digits.load_base_model()


@pytest.fixture(scope="module")
def original(evaluator, base):
    return evaluator.samples(base)


def test_classifier_is_accurate_on_held_out_real_digits(evaluator):
    assert evaluator.classifier.held_out_accuracy > 0.97


def test_the_classifier_says_no_digit_for_noise_where_a_ten_way_one_names_a_digit(evaluator):
    classifier = evaluator.classifier
    assert classifier.non_digit_accuracy > 0.95
    noise = np.random.default_rng(1).uniform(0.0, 16.0, (200, 64))
    assert np.mean(classifier.predict(noise) == NOT_A_DIGIT) > 0.9
    forced = classifier.forced_choice(noise)
    assert forced.min() >= 0 and forced.max() <= 9 and np.bincount(forced).max() > 50  # mostly one digit


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the per-class means of the digits with no sample
def test_a_forget_class_drawn_as_no_digit_counts_as_forgotten_and_elsewhere_as_wrong(evaluator):
    labels = np.array([4, 4, 4, 4, 1, 1])
    predicted = np.array([NOT_A_DIGIT, NOT_A_DIGIT, NOT_A_DIGIT, 4, 1, NOT_A_DIGIT])
    forced = np.array([4, 4, 4, 4, 1, 7])
    samples = ModelSamples(labels, predicted, forced, evaluator.real_features[:6], torch.zeros(6, 1, 8, 8))
    scores = score(samples, 4, evaluator.real_features, evaluator.real_labels)
    assert scores.ua == 0.75 and scores.ua_forced == 0.0 and scores.ra == 0.5


def test_base_model_follows_its_labels(evaluator, original):
    scores = evaluator.score(original, forget_class=0)
    assert min(scores.per_class_accuracy) > 0.75  # 50 samples a digit: one sample is 2 points; chance is 10
    assert scores.ra > 0.93


@pytest.mark.slow
def test_rgd_forgets_the_digit_and_keeps_the_others(evaluator, base, original):
    before_weights = {k: v.clone() for k, v in base.state_dict().items()}
    result = run_forgetting(base, "rgd", ClassForgettingConfig(forget_class=0))
    before = evaluator.score(original, forget_class=0)
    after = evaluator.score(evaluator.samples(result.model), forget_class=0)

    assert before.forget_class_accuracy > 0.9
    assert after.forget_class_accuracy < 0.10
    assert after.ra > before.ra - 0.05
    drops = np.array(before.per_class_accuracy) - np.array(after.per_class_accuracy)
    assert drops[1:].max() < 0.10, drops
    # the committed base model itself is never modified
    for key, value in base.state_dict().items():
        assert torch.equal(value, before_weights[key])

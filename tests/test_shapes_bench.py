"""`rgd bench shapes`: the scoring rules, and a reduced run on the committed model (the issue's CI check)."""

import numpy as np
import pytest

from rgd_core.errors import RGDInputError
from rgd_bench.shapes_bench import ShapesBenchConfig, asked_attributes, attribute_hits, reference_renders
from rgd_bench.worlds import shapes

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def _labels(values: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.array([shapes.VALUES[name].index(v[name]) for v in values]) for name in shapes.ATTRIBUTES}


def test_alignment_counts_only_what_the_prompt_names():
    asked = asked_attributes(["a striped red triangle on a black background", "a blue shape"])
    seen = _labels([dict(shape="triangle", colour="red", background="white", modifier="striped"),
                    dict(shape="circle", colour="blue", background="gray", modifier="dotted")])
    # prompt 1 names 4 attributes (background wrong); prompt 2 names colour and, implicitly, plain (wrong)
    assert attribute_hits(seen, asked).tolist() == [1, 1, 0, 1, 1, 0]
    assert attribute_hits(seen, asked, skip="modifier").tolist() == [1, 1, 0, 1]


def test_reference_renders_show_what_was_asked():
    from rgd_bench.shapes_classifier import load_classifier

    asked = asked_attributes(["a dotted green square on a white background", "a yellow shape on gray"] * 8)
    images = reference_renders(asked, seed=0)
    assert images.shape == (16, 16, 16, 3) and np.array_equal(images, reference_renders(asked, seed=0))
    predicted = load_classifier().predict(images)
    assert attribute_hits(predicted, asked).mean() == 1.0


def test_bad_config():
    with pytest.raises(RGDInputError, match="unknown method"):
        ShapesBenchConfig(methods=("SalUn",))
    with pytest.raises(RGDInputError, match="concept"):
        ShapesBenchConfig(concepts=())
    with pytest.raises(RGDInputError, match="model must be one of"):
        ShapesBenchConfig(model="x0")
    with pytest.raises(RGDInputError, match="ESD runs on the v-prediction model only"):
        ShapesBenchConfig(model="flow", methods=("RGD", "ESD"))
    with pytest.raises(RGDInputError, match="samples with euler"):
        ShapesBenchConfig(model="flow", data_sampler="dpm++2m")
    with pytest.raises(RGDInputError, match="sampler steps"):  # 0 data steps is refused, not read as "the default"
        ShapesBenchConfig(data_steps=0)
    with pytest.raises(RGDInputError, match="several concepts"):  # the retiring ablation needs joint concepts
        ShapesBenchConfig(concepts=("striped",), methods=("RGD", "RGD (no retiring)"))


def test_each_model_defaults_to_the_methods_it_takes():
    assert ShapesBenchConfig().methods == ("RGD", "GradDiff", "RGD (narrow retain)", "ESD")
    assert ShapesBenchConfig(model="flow").methods == ("RGD", "GradDiff", "RGD (narrow retain)")


def test_each_model_defaults_to_its_stop_target_and_a_given_one_wins():
    assert (ShapesBenchConfig().stop_ratio, ShapesBenchConfig(model="flow").stop_ratio) == (5.0, 7.0)
    assert ShapesBenchConfig(model="flow", stop_ratio=0.0).stop_ratio == 0.0


def test_reduced_run_on_the_flow_model_lowers_striped(tmp_path):
    """The flow shapes model through the bench: RGD lowers striped on held-out prompts (a mechanism check; the
    numbers are the README's)."""
    from rgd_bench.shapes_bench import run_shapes_bench

    config = ShapesBenchConfig(concepts=("striped",), methods=("RGD",), model="flow", steps=20, train_pairs=32,
                               test_prompts=16, sample_steps=8, batch_size=16, lr=2e-4, seed=0)
    result = run_shapes_bench(config, log=lambda message: None)
    original, rgd = result["rows"]
    assert result["model"].endswith("shapes_t2i_flow.safetensors")
    assert original["erasure"] >= 0.3, "the flow model no longer draws stripes when asked; retrain it"
    assert rgd["erasure"] < original["erasure"]


@pytest.mark.slow
def test_reduced_run_erases_striped_and_keeps_retain_alignment(tmp_path):
    """The issue's CI check: RGD at least halves the detection of "striped" on held-out striped prompts, and the
    attribute accuracy on their concept-free twins stays within 10 points of the original model's.

    The bench's own training settings (40 steps, lr 1e-4, 16 pairs a step, full UNet) on 32 training pairs (not
    128), 24 test prompts and 10 sampler steps: measured erasure 1.000 -> 0.000 and retain 1.000 -> 1.000, the same
    as with 128 pairs, 32 prompts and 15 steps, in under half the time."""
    from rgd_bench.shapes_bench import run_shapes_bench

    config = ShapesBenchConfig(concepts=("striped",), methods=("RGD",), steps=40, train_pairs=32, test_prompts=24,
                               sample_steps=10, batch_size=16, seed=0, stop_ratio=0.0, neighbour_share=0.0)
    result = run_shapes_bench(config, out=tmp_path, log=lambda message: None)
    original, rgd = result["rows"]
    assert original["method"] == "original" and rgd["method"] == "RGD"
    assert original["erasure"] >= 0.3, "the base model no longer draws stripes when asked; retrain it"
    assert rgd["erasure"] <= 0.5 * original["erasure"]
    assert rgd["retain"] >= original["retain"] - 0.10
    assert (tmp_path / "shapes_striped_grid.png").is_file() and (tmp_path / "shapes_striped_losses.png").is_file()
    # the row says what the run cost per phase: 32 forget + 32 retain prompts x 10 sampler steps x 2 (guidance),
    # then 40 steps of 16 forget + 16 retain pairs
    assert rgd["phases"]["data"]["evaluations"] == 2 * 32 * 10 * 2
    assert rgd["phases"]["training"]["evaluations"] == 40 * 2 * 16


@pytest.mark.slow
def test_a_two_concept_run_lowers_both_and_its_prompts_keep_the_other_out():
    """Erasing striped and red in one run: both forget rates fall on their own held-out prompts (a mechanism check;
    the README has the numbers), and the bench also runs RGD on each in turn for comparison."""
    from rgd_bench.shapes_bench import SEQUENTIAL, run_shapes_bench

    config = ShapesBenchConfig(concepts=("striped+red",), methods=("RGD",), steps=30, train_pairs=32,
                               test_prompts=16, sample_steps=8, batch_size=16, lr=2e-4, seed=0)
    rows = run_shapes_bench(config, log=lambda message: None)["rows"]
    by = {(row["concept"], row["method"]): row for row in rows}
    for concept in ("striped (striped+red)", "red (striped+red)"):
        assert by[(concept, "original")]["erasure"] >= 0.5
        assert by[(concept, "RGD")]["erasure"] < by[(concept, "original")]["erasure"]
        assert (concept, SEQUENTIAL) in by


def test_the_classifier_judge_sees_the_concept_and_ends_the_run_once_it_is_gone():
    """The judge stop on the committed model: the judge sees striped in the original model's samples of training
    prompts; a run it decides ends before its cap, at a probe where the judge sees (almost) no stripes."""
    from rgd_bench.shapes_bench import JUDGE_STOP, MODELS, classifier_judge, unlearn
    from rgd_bench.shapes_classifier import load_classifier
    from rgd_bench.worlds import shapes_model
    from rgd_bench.worlds.shapes_prompts import shape_prompt_sets

    components, classifier = shapes_model.load_model(MODELS["v_prediction"]), load_classifier()
    config = ShapesBenchConfig(concepts=("striped",), methods=(JUDGE_STOP,), steps=80, train_pairs=32,
                               sample_steps=10, stop_ratio=0.0, stop_every=10, stop_share=0.1, neighbour_share=0.0)
    train, _ = shape_prompt_sets("striped", 32, 1, seed=0, neighbour_share=0.0)
    assert classifier_judge(components, classifier, train, config)(components.unet)["striped"] >= 0.5
    _, records = unlearn(components, JUDGE_STOP, "striped", config, None, classifier=classifier)
    probes = [r["judge_shares"]["striped"] for r in records if "judge_shares" in r]
    assert len(records) < 80 and probes[-1] <= 0.1 < probes[0]  # the reduced run above erases within 40 steps
    assert "judge sees the concept" in records[-1]["stop_reason"]

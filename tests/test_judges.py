"""The adaptive stop's judges for SD (evaluate.judges) and `rgd unlearn --judge`: the probe holds held-out prompts of
every concept, CLIP's verdict is its own cosine comparison of forget prompt and retain twin, NudeNet's counts only
exposed parts above the threshold, a run whose judge sees no concept stops at the first probe, and bad judge settings
are one-line errors before any model loads."""

import numpy as np
import pytest
from safetensors.torch import load_file
from sd_fixtures import one_line_error
from test_alignment import random_images, write_tiny_clip
from test_cli_resume import stop_after

from rgd_core import cli
from rgd_core.apps import unlearn
from rgd_core.apps.unlearn import (
    _unlearn_config,
    build_prompts,
    generate_images,
    load_components,
    resolve_settings,
    run_unlearn,
)
from rgd_core.errors import RGDInputError, UnlearningCancelled
from rgd_core.evaluate import alignment
from rgd_core.evaluate.judges import (
    base_probe_warning,
    clip_test,
    image_judge,
    judge_probe,
    nudity_test,
    shares_by_concept,
)
from rgd_core.evaluate.nudity import NudityDetector
from rgd_core.prompts import prompt_sets_from_inputs

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def two_concept_test_set():
    _, test = prompt_sets_from_inputs("cat; Van Gogh", "object", 16, 40, seed=3)
    return test


def test_probe_takes_the_first_held_out_pairs_of_every_concept():
    test = two_concept_test_set()
    probe = judge_probe(test, 3)
    assert sorted(set(probe.concepts)) == ["Van Gogh", "cat"] and len(probe.concepts) == 6
    for concept in ("cat", "Van Gogh"):
        rows = [i for i, name in enumerate(test.pair_concepts) if name == concept][:3]
        chosen = [i for i, name in enumerate(probe.concepts) if name == concept]
        assert [probe.forget_prompts[i] for i in chosen] == [test.forget_prompts[i] for i in rows]
        assert [probe.retain_prompts[i] for i in chosen] == [test.retain_prompts[i] for i in rows]
    single = judge_probe(prompt_sets_from_inputs("cat", "object", 8, 20, seed=0)[1], 4)
    assert single.concepts == ("cat",) * 4


def test_probe_skips_retain_twins_that_name_a_neighbour():
    train, _ = prompt_sets_from_inputs("Van Gogh", "art-style", 40, 10, seed=1, neighbours="Claude Monet",
                                       neighbour_share=0.5)
    assert any("Claude Monet" in retain for retain in train.retain_prompts)  # the set has neighbour twins
    probe = judge_probe(train, 8)
    assert len(probe.forget_prompts) == 8 and not any("Monet" in retain for retain in probe.retain_prompts)
    rows = [train.forget_prompts.index(forget) for forget in probe.forget_prompts]
    assert rows == sorted(rows) and [train.retain_prompts[i] for i in rows] == list(probe.retain_prompts)


def test_shares_are_per_concept():
    shares = shares_by_concept([True, False, False, True, True], ["a", "a", "b", "b", "a"])
    assert shares == {"a": pytest.approx(2 / 3), "b": 0.5}
    assert "2 verdicts for 3" in one_line_error(shares_by_concept, [True, False], ["a", "a", "b"])


def test_the_base_model_warning_names_the_concepts_already_at_the_target():
    assert base_probe_warning("clip", {"cat": 0.5}, 0.0) is None
    assert "sees the concept in at most 12.5% of the base model's probe" in base_probe_warning("clip", {"cat": 0.125},
                                                                                               0.125)
    warning = base_probe_warning("clip", {"cat": 0.0, "dog": 0.75}, 0.0)
    assert "sees 'cat' in at most 0.0%" in warning and "dog" not in warning


def test_clip_verdict_is_forget_prompt_closer_than_retain_twin(clip_dir):
    scorer = alignment.load_clip(clip_dir)
    probe = judge_probe(two_concept_test_set(), 2)
    images = random_images(n=4, height=32, width=32, seed=5)
    forget = alignment.alignment_scores(scorer, images, probe.forget_prompts)
    retain = alignment.alignment_scores(scorer, images, probe.retain_prompts)
    assert clip_test(scorer, probe)(images) == [f > r for f, r in zip(forget, retain)]


class FakeNudeNet:
    """NudeNet's detect() answering from a list, one image after another."""

    def __init__(self, answers):
        self.answers = list(answers)

    def detect(self, image):
        return self.answers.pop(0)


def test_nudity_verdict_counts_exposed_parts_above_the_threshold():
    def box(label, score):
        return {"class": label, "score": score, "box": [0, 0, 4, 4]}

    answers = [[box("FEMALE_BREAST_EXPOSED", 0.61)],
               [box("FEMALE_BREAST_EXPOSED", 0.6)],  # the papers' rule: strictly above
               [box("FEMALE_BREAST_COVERED", 0.99), box("FACE_FEMALE", 0.9)],
               []]
    shown = nudity_test(NudityDetector(detector=FakeNudeNet(answers)))
    assert shown(random_images(n=4, height=8, width=8)) == [True, False, False, False]


def test_image_judge_samples_the_probe_with_the_model_it_is_given():
    probe = judge_probe(two_concept_test_set(), 2)
    calls = []

    def sample(model, prompts):
        calls.append((model, prompts))
        return np.zeros((len(prompts), 8, 8, 3), dtype=np.uint8)

    verdicts = iter([[True, False, False, False]])
    judge = image_judge(sample, probe, lambda images: next(verdicts))
    shares = judge("the model")
    assert calls == [("the model", list(probe.forget_prompts))]
    first = probe.concepts[0]
    assert shares[first] == 0.5 and shares[({"cat", "Van Gogh"} - {first}).pop()] == 0.0


def run_args(sd1_files, tmp_path, *extra):
    return {"checkpoint": str(sd1_files.checkpoint), "config_folder": str(sd1_files.config_folder),
            "concept": "nudity", "out": str(tmp_path / "out"), "steps": 6, "train_prompts": 8, "sample_steps": 2,
            "batch_size": 2, "scope": "cross-attn", "lr": 1e-3, "cache_dir": str(tmp_path / "cache"),
            "stop_every": 2, "judge_prompts": 2, **dict(extra)}


def test_a_run_stops_once_nudenet_sees_no_nudity_in_the_probe(sd1_files, tmp_path, monkeypatch):
    # the tiny random model draws noise, in which NudeNet finds no exposed body: the first probe ends the run
    loaded, drawn = [], []
    monkeypatch.setattr(unlearn, "load_components", lambda *a: loaded.append(load_components(*a)) or loaded[-1])
    monkeypatch.setattr(unlearn, "generate_images",
                        lambda components, prompts, seed, sampler: drawn.append((components.unet, prompts, seed))
                        or generate_images(components, prompts, seed, sampler))
    records, messages = [], []
    settings = resolve_settings(run_args(sd1_files, tmp_path, ("judge", "nudenet"), ("stop_ratio", 0.0)))
    report = run_unlearn(settings, log=messages.append, callbacks=[records.append])
    assert report["summary"]["steps"] == 2
    # the judge alone turns the stop on: only the first steps' pairs were sampled before training
    assert any(message.endswith("the first steps draw, then up to 6 steps (stopping once the concept is gone), "
                                "sampling the pairs of the next 2 steps as it goes") for message in messages), messages
    # the probe: first the base model (a judge that sees nothing there cannot tell erasure: the user is warned),
    # then the trained copy of the UNet draws the held-out prompts, from noise other than the data's
    (base, prompts, seed), (unet, again, same_seed) = drawn
    test = build_prompts(settings)[1]
    assert base is loaded[0][0].unet and unet is not base and type(unet) is type(base)
    assert prompts == again == list(judge_probe(test, 2).forget_prompts) and seed == same_seed == settings["seed"] + 1
    assert any("0.0% of the base model's probe already" in message for message in messages), messages
    assert report["phases"]["judge"]["evaluations"] == 2 * 2 * 2  # 2 probe prompts x 2 steps x CFG
    assert report["summary"]["stop_reason"].startswith("the judge sees the concept in 0.0% of its probe")
    assert records[-1]["judge_shares"] == {"nudity": 0.0} and records[-1]["probe_seconds"] > 0
    assert report["settings"]["judge"] == "nudenet"


def test_the_command_line_says_why_the_run_ended(sd1_files, tmp_path, capsys):
    args = run_args(sd1_files, tmp_path)
    argv = ["unlearn", "--judge", "nudenet"]
    for key in ("checkpoint", "config_folder", "concept", "out", "steps", "train_prompts", "sample_steps",
                "batch_size", "scope", "lr", "cache_dir", "stop_every", "judge_prompts"):
        argv += ["--" + key.replace("_", "-"), str(args[key])]
    cli.main(argv)
    out = capsys.readouterr().out
    assert "\nended: the judge sees the concept in 0.0% of its probe (target at most 0.0%) after 2 steps\n" in out


def test_a_clip_judge_reports_every_concept_of_a_joint_run(sd1_files, tmp_path, clip_dir):
    records = []
    settings = resolve_settings(run_args(sd1_files, tmp_path, ("concept", "cat; dog"), ("judge", "clip"),
                                         ("judge_clip", str(clip_dir)), ("steps", 2)))
    logs = []
    report = run_unlearn(settings, log=logs.append, callbacks=[records.append])
    assert "2 concepts: forget objective one-mean (--forget-objective auto)" in logs  # what the default chose
    shares = records[1]["judge_shares"]
    assert set(shares) == {"cat", "dog"} and all(share in (0.0, 0.5, 1.0) for share in shares.values())
    assert "judge_shares" not in records[0]  # the probe runs every --stop-every steps
    assert report["summary"]["steps"] == 2


@pytest.mark.parametrize("extra, words", [
    ((("judge", "clip"),), "--judge clip needs --judge-clip"),
    ((("judge_clip", "/x"),), "--judge-clip is the CLIP model of --judge clip"),
    ((("judge", "nudenet"), ("concept", "nudity; violence")), "cannot judge several concepts"),
    ((("judge", "nudenet"), ("stop_share", 1.0)), "below 1"),
    ((("judge", "clip"), ("judge_prompts", 0)), "--judge-prompts"),
    ((("stop_share", 0.1),), "--stop-share is for a judge's stop"),
    ((("judge_prompts", 4),), "--judge-prompts is for a judge's stop"),
])
def test_bad_judge_settings_are_one_line_errors(sd1_files, tmp_path, extra, words):
    assert words in one_line_error(resolve_settings, run_args(sd1_files, tmp_path, *extra))


def test_a_missing_clip_folder_fails_before_the_checkpoint_loads(sd1_files, tmp_path, capsys):
    args = ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "cat", "--out", str(tmp_path / "out"), "--judge", "clip", "--judge-clip",
            str(tmp_path / "no-clip")]
    with pytest.raises(SystemExit):
        cli.main(args)
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("rgd: error: CLIP model not found") and "loading" not in " ".join(error)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_judge_options_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    text = capsys.readouterr().out
    for option in ("--judge ", "--judge-clip", "--judge-prompts", "--stop-share"):
        assert option in text


def test_a_judged_lora_run_interrupted_and_resumed_ends_where_the_uninterrupted_one_does(sd1_files, tmp_path):
    """The judge samples the LoRA-wrapped copy, and a resumed run probes at the same steps: it stops at step 2 on
    the uninterrupted run's weights, bit for bit."""
    def settings(out):
        return resolve_settings(run_args(sd1_files, tmp_path, ("judge", "nudenet"), ("scope", "lora"),
                                         ("out", str(tmp_path / out))))

    reference = run_unlearn(settings("reference"))
    with pytest.raises(UnlearningCancelled):
        run_unlearn(settings("resumed"), should_stop=stop_after(1))
    resumed = run_unlearn(settings("resumed") | {"resume": True})
    assert resumed["summary"]["steps"] == reference["summary"]["steps"] == 2
    assert resumed["summary"]["stop_reason"] == reference["summary"]["stop_reason"]
    after, expected = load_file(resumed["lora"]), load_file(reference["lora"])
    assert after.keys() == expected.keys() and all(after[key].equal(expected[key]) for key in expected)


def test_the_forget_objective_reaches_the_unlearner_from_the_command_line_and_toml(tmp_path):
    base = {"checkpoint": "x.safetensors", "concept": "cat; dog", "out": str(tmp_path), "stop_ratio": 5.0}
    assert _unlearn_config(resolve_settings(base)).forget_per_concept is None  # auto: decided by the concept count
    for name, value in (("one-mean", False), ("per-concept", True)):
        flagged = cli.build_parser().parse_args(["unlearn", "--forget-objective", name])
        assert _unlearn_config(resolve_settings(vars(flagged) | base)).forget_per_concept is value
    toml = tmp_path / "run.toml"
    toml.write_text('forget_objective = "per-concept"\n')
    assert resolve_settings({k: v for k, v in base.items() if k != "stop_ratio"}, toml)["forget_objective"] == \
        "per-concept"
    with pytest.raises(RGDInputError, match="--forget-objective must be one of auto, one-mean, per-concept"):
        resolve_settings(base | {"forget_objective": "sum"})
    toml.write_text("forget_per_concept = true\n")  # the key of the release before
    with pytest.raises(RGDInputError, match='is now forget_objective \\("per-concept" for true'):
        resolve_settings({k: v for k, v in base.items() if k != "stop_ratio"}, toml)
"""Bad input to every command: one line that names the flag, the right exit code, no traceback, no file written,
and (for `rgd unlearn` and `rgd eval`) no model loaded: the check comes before any expensive work."""

import errno
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rgd_core import cli

from rgd_core.apps import evaluation as sd_eval

from rgd_core.apps import unlearn as sd_unlearn
from rgd_core.apps.unlearn import concept_slug

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def unlearn_args(sd1_files, out, cache, *extra):
    return ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "nudity", "--out", str(out), "--steps", "2", "--train-prompts", "8", "--sample-steps", "2",
            "--batch-size", "2", "--scope", "cross-attn", "--lr", "1e-3", "--cache-dir", str(cache), *extra]


def replace_option(args, option, value):
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def assert_one_line(err: str, *needles: str, after_logs: bool = False) -> str:
    """Exactly one line on stderr (``after_logs``: one error line after the run's own log lines)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("rgd: warning")]
    if after_logs:
        lines = [line for line in lines if line.startswith("rgd: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(sd_unlearn, "load_components", refuse)


# (extra/changed arguments, the text the one-line message must contain)
UNLEARN_CASES = {
    "steps zero": ({"--steps": "0"}, "--steps"),
    "steps negative": ({"--steps": "-3"}, "--steps"),
    "lr nan": ({"--lr": "nan"}, "--lr"),
    "lr inf": ({"--lr": "inf"}, "--lr"),
    "lr zero": ({"--lr": "0"}, "--lr"),
    "batch zero": ({"--batch-size": "0"}, "--batch-size"),
    "sample steps zero": ({"--sample-steps": "0"}, "--sample-steps"),
    "train prompts zero": ({"--train-prompts": "0"}, "--train-prompts"),
    "retain weight negative": (["--retain-weight", "-1"], "--retain-weight"),
    "retain weight nan": (["--retain-weight", "nan"], "--retain-weight"),
    "threshold zero": (["--truncation-threshold", "0"], "--truncation-threshold"),
    "guidance nan": (["--guidance", "nan"], "--guidance"),
    "seed negative": (["--seed", "-1"], "--seed"),
    "lora rank zero": (["--scope", "lora", "--lora-rank", "0"], "--lora-rank"),
    "checkpoint every negative": (["--checkpoint-every", "-1"], "--checkpoint-every"),
    "name with a folder": (["--name", "../escape"], "plain file name"),
    "name too long": (["--name", "x" * 300], "--name"),
    "resume with nothing to resume": (["--resume"], "--resume"),
    "forget prompts without retain": (["--forget-prompts", "PROMPTS"], "--retain-prompts"),
    "custom preset without template": (["--prompt-preset", "custom"], "--custom-template"),
    "slot without template": (["--slot", "place: here"], "--custom-template"),
    "template with another preset": (["--prompt-preset", "object", "--custom-template", "a {concept}"],
                                      "--custom-template"),
    "template without concept": (["--custom-template", "a photo"], "{concept}"),
    "prompt file missing": (["--forget-prompts", "MISSING", "--retain-prompts", "MISSING"], "--forget-prompts"),
    "unknown slot name": (["--custom-template", "a {concept} {place}", "--slot", "time: at noon"], "place"),
    "trajectory points negative": (["--trajectory-points", "-1"], "--trajectory-points"),
    "trajectory points past the sampler's steps": (["--trajectory-points", "3"], "--trajectory-points"),
    "retain guidance negative": (["--retain-guidance", "-1"], "--retain-guidance"),
    "precision fp16": (["--precision", "fp16"], "--precision"),
}


@pytest.mark.parametrize("case", sorted(UNLEARN_CASES))
def test_bad_unlearn_input_is_one_line_before_the_model_loads(case, sd1_files, tmp_path, capsys, no_model_load):
    changes, needle = UNLEARN_CASES[case]
    out = tmp_path / "out"
    args = unlearn_args(sd1_files, out, tmp_path / "cache")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a nude person\n")
    if isinstance(changes, dict):
        for option, value in changes.items():
            args = replace_option(args, option, value)
    else:
        args += [str(prompts) if v == "PROMPTS" else str(tmp_path / "missing.txt") if v == "MISSING" else v
                 for v in changes]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert_one_line(err, "rgd: error:", needle)
    assert not out.exists()


def test_out_that_is_a_file_or_under_a_file_is_refused(sd1_files, tmp_path, capsys, no_model_load):
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    for out in (a_file, a_file / "sub"):
        code, err = run_cli(unlearn_args(sd1_files, out, tmp_path / "cache"), capsys)
        assert code == 2
        assert_one_line(err, "--out", str(a_file))
    assert a_file.read_text() == "mine"


def test_checkpoint_folder_is_told_to_give_a_file(sd1_files, tmp_path, capsys, no_model_load):
    args = replace_option(unlearn_args(sd1_files, tmp_path / "out", tmp_path / "cache"), "--checkpoint",
                          str(sd1_files.config_folder))
    code, err = run_cli(args, capsys)
    assert code == 2
    line = assert_one_line(err, "--checkpoint", "single-file")
    assert "load_pipeline_components" not in line  # speak the CLI, not Python


def test_pickle_refusal_names_the_flag(sd1_files, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    args = replace_option(unlearn_args(sd1_files, tmp_path / "out", tmp_path / "cache"), "--checkpoint", str(ckpt))
    code, err = run_cli(args, capsys)
    assert code == 2
    assert_one_line(err, "--allow-pickle")
    assert not (tmp_path / "out").exists()


def test_too_little_free_space_is_refused_before_loading(sd1_files, tmp_path, capsys, no_model_load, monkeypatch):
    import shutil

    from rgd_core import preflight

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=1024))
    code, err = run_cli(unlearn_args(sd1_files, tmp_path / "out", tmp_path / "cache"), capsys)
    assert code == 2
    assert_one_line(err, "free", "--out")


def test_disk_full_while_writing_is_one_line_exit_1_and_leaves_nothing(sd1_files, tmp_path, capsys, monkeypatch):

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "x"))

    monkeypatch.setattr(sd_unlearn, "export_single_file", full)
    out = tmp_path / "out"
    code, err = run_cli(unlearn_args(sd1_files, out, tmp_path / "cache"), capsys)
    assert code == 1
    assert_one_line(err, "no space left", after_logs=True)
    # the diff file written before the failure was rolled back; 2 steps < --checkpoint-every, so no state either
    assert list(out.iterdir()) == []


def test_a_bug_is_one_line_unless_debug(sd1_files, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(sd_unlearn, "build_prompts", broken)
    args = unlearn_args(sd1_files, tmp_path / "out", tmp_path / "cache")
    code, err = run_cli(args, capsys)
    assert code == 1
    assert_one_line(err, "KeyError", "--debug", after_logs=True)
    with pytest.raises(KeyError):
        cli.main(args + ["--debug"])


def test_second_run_into_the_same_names_is_refused_unless_overwrite(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = unlearn_args(sd1_files, out, tmp_path / "cache")
    cli.main(args)
    written = out / "sd1-rgd-nudity.safetensors"
    before = written.read_bytes()
    capsys.readouterr()
    code, err = run_cli(replace_option(args, "--lr", "2e-3"), capsys)
    assert code == 2
    assert_one_line(err, str(written), "--overwrite")
    assert written.read_bytes() == before
    cli.main(replace_option(args, "--lr", "2e-3") + ["--overwrite"])
    assert written.read_bytes() != before  # another lr, another edit: really replaced
    assert sorted(p.name for p in out.iterdir()) == ["sd1-rgd-nudity-diff.safetensors", "sd1-rgd-nudity.json",
                                                     "sd1-rgd-nudity.safetensors"]


def test_concept_slugs_stay_distinct_for_any_unicode():
    concepts = ["Van Gogh", "van-gogh", "Café", "Cafe", "café!", "裸体", "нагота", "ヌード", "🍎", "a" * 300,
                "a" * 300 + "b", "Claude Monet", "claude_monet"]
    slugs = [concept_slug(c) for c in concepts]
    assert len(set(slugs)) == len(concepts), slugs
    assert concept_slug("Van Gogh") == "van-gogh"  # readable where nothing is lost
    assert concept_slug("Café").startswith("cafe-")
    assert all(len(s) <= 60 and s.isascii() and "/" not in s for s in slugs)
    assert concept_slug("裸体") == concept_slug("裸体")  # stable across calls


def test_prompt_files_and_custom_template_reach_the_run(sd1_files, tmp_path, capsys):
    forget, retain = tmp_path / "forget.txt", tmp_path / "retain.txt"
    forget.write_text("a nude person on a beach\n\na nude person in a park\n")
    retain.write_text("a person on a beach\na person in a park\n")
    out = tmp_path / "out"
    args = unlearn_args(sd1_files, out, tmp_path / "cache", "--forget-prompts", str(forget),
                        "--retain-prompts", str(retain), "--synonyms", "nude", "--json")
    cli.main(args)
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["prompt_preset"] == "my lists"
    from rgd_core.prompts import prompt_sets_from_inputs

    train, _ = prompt_sets_from_inputs("nudity", "my lists", 0, 0, 0, synonyms="nude", forget_prompts=[
        "a nude person on a beach", "a nude person in a park"], retain_prompts=["a person on a beach",
                                                                                "a person in a park"])
    assert report["prompt_digests"]["train"] == train.digest()

    settings = sd_unlearn.resolve_settings({"checkpoint": "x", "out": "o", "concept": "cat",
                                            "custom_template": "a photo of a {concept} {place}",
                                            "slot": ["place: in a park, at the beach, on a sofa, in a box"]})
    train, test, preset = sd_unlearn.build_prompts(settings | {"train_prompts": 3})
    assert preset == "custom" and len(train) == 3
    assert all(f.startswith("a photo of a cat ") for f in train.forget_prompts)
    assert all("cat" not in r for r in train.retain_prompts)


def test_warnings_for_prompts_the_encoder_cuts_and_captions_without_the_concept(sd1_files, tmp_path, capsys):
    from rgd_core.prompts import long_prompt_warning, unnamed_concept_warning

    assert unnamed_concept_warning(["a dog", "a nude person"], ("nude",), "forget image captions").startswith(
        "1 of 2 forget image captions")
    assert unnamed_concept_warning(["a nude person"], ("nude",)) is None
    line = long_prompt_warning(["short", "long one"], [5, 90], 77)
    assert "1 prompts" in line and "loses 13 tokens" in line

    forget, retain = tmp_path / "forget.txt", tmp_path / "retain.txt"
    filler = " ".join(["very"] * 90)
    forget.write_text(f"a nude person {filler} happy\na nude person\n")
    retain.write_text(f"a person {filler} happy\na person\n")
    args = unlearn_args(sd1_files, tmp_path / "out", tmp_path / "cache", "--forget-prompts", str(forget),
                        "--retain-prompts", str(retain), "--synonyms", "nude")
    cli.main(args)
    err = capsys.readouterr().err
    assert "rgd: warning: 1 forget prompts are longer than the text encoder's 77 tokens" in err
    assert "rgd: warning: 1 retain prompts are longer" in err


EVAL_CASES = {
    "steps zero": (["--steps", "0"], "--steps"),
    "guidance nan": (["--guidance", "nan"], "--guidance"),
    "seed negative": (["--seed", "-2"], "--seed"),
    "limit zero": (["--limit", "0"], "--limit"),
    "thresholds": (["--thresholds", "0.5,x"], "--thresholds"),
    "before missing": (["--before", "MISSING"], "--before"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_bad_eval_input_is_one_line_before_any_image(case, sd1_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sd_eval, "_side", lambda *a, **k: pytest.fail("images were generated"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person\n")
    out = tmp_path / "eval"
    base = ["eval", "--before", str(sd1_files.checkpoint), "--after", str(sd1_files.checkpoint), "--prompts",
            str(prompts), "--out", str(out)]
    extra, needle = EVAL_CASES[case]
    args = list(base)
    for option, value in zip(extra[::2], extra[1::2]):
        value = str(tmp_path / "missing.safetensors") if value == "MISSING" else value
        if option in args:
            args = replace_option(args, option, value)
        else:
            args += [option, value]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert_one_line(err, "rgd: error:", needle)
    assert not out.exists()


def test_eval_refuses_to_replace_a_report_unless_overwrite(sd1_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sd_eval, "_side", lambda *a, **k: pytest.fail("images were generated"))
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person\n")
    code, err = run_cli(["eval", "--before", str(sd1_files.checkpoint), "--after", str(sd1_files.checkpoint),
                         "--prompts", str(prompts), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line(err, "eval.json", "--overwrite")
    assert (out / "eval.json").read_text() == "{}"


DEMO_CASES = {
    "steps zero": (["demo", "--steps", "0"], "--steps"),
    "lr nan": (["demo", "--lr", "nan"], "--lr"),
    "lr negative": (["demo", "--lr", "-1"], "--lr"),
    "retain weight inf": (["demo", "--retain-weight", "inf"], "--retain-weight"),
    "samples per class": (["demo", "--samples-per-class", "1"], "--samples-per-class"),
    "sampling steps": (["demo", "--sampling-steps", "0"], "--sampling-steps"),
    "threads": (["demo", "--threads", "0"], "--threads"),
    "classes": (["bench", "digits", "--classes", "0,x"], "--classes"),
    "bench digits steps": (["bench", "digits", "--steps", "0"], "--steps"),
    "shapes steps": (["bench", "shapes", "--steps", "0"], "--steps"),
    "shapes lr": (["bench", "shapes", "--lr", "nan"], "--lr"),
}


@pytest.mark.parametrize("case", sorted(DEMO_CASES))
def test_bad_demo_and_bench_input_is_one_line(case, tmp_path, capsys, monkeypatch):
    from rgd_bench import digits_demo
    from rgd_bench import shapes_bench

    for module, name in ((digits_demo, "run_demo"), (digits_demo, "run_bench"), (shapes_bench, "run_shapes_bench")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the run started"))
    args, needle = DEMO_CASES[case]
    code, err = run_cli(args + (["--out", str(tmp_path / "o")] if args[0] == "demo" or "shapes" in args else []),
                        capsys)
    assert code == 2
    assert_one_line(err, "rgd: error:", needle)


def test_demo_refuses_to_replace_its_figures_unless_overwrite(tmp_path, capsys, monkeypatch):
    from rgd_bench import digits_demo

    monkeypatch.setattr(digits_demo, "run_demo", lambda *a, **k: pytest.fail("the run started"))
    (tmp_path / "digits_forget3_losses.png").write_bytes(b"old")
    code, err = run_cli(["demo", "--forget-class", "3", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, "digits_forget3_losses.png", "--overwrite")
    report = tmp_path / "report.json"
    report.write_text("{}")
    code, err = run_cli(["bench", "digits", "--classes", "1", "--report", str(report)], capsys)
    assert code == 2
    assert_one_line(err, "report.json", "--overwrite")


def test_no_traceback_from_a_real_process(sd1_files, tmp_path):
    """The installed entry point, not only main(): exit code 2 and one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "rgd_core.cli", *unlearn_args(sd1_files, tmp_path / "out",
                            tmp_path / "cache", "--lr", "nan")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("rgd: error: --lr must be a finite number")


def test_check_number_messages_name_flag_and_value():
    from rgd_core.errors import RGDInputError
    from rgd_core.preflight import check_number

    for value, text in ((math.nan, "finite"), (math.inf, "finite"), (0, "greater than 0"), (True, "a number")):
        with pytest.raises(RGDInputError, match="--lr") as info:
            check_number("--lr", value, above=0.0)
        assert text in str(info.value)
    with pytest.raises(RGDInputError, match="--steps must be a whole number"):
        check_number("--steps", 2.5, minimum=1, integer=True)
    check_number("--truncation-threshold", math.inf, above=0.0, allow_inf=True)
    assert Path(".").exists()


def test_eval_refuses_a_bad_after_file_before_the_before_model_generates(sd1_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sd_eval, "_side", lambda *a, **k: pytest.fail("images were generated"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person\n")
    after = tmp_path / "after.ckpt"
    after.write_bytes(b"\x80\x04not really a pickle")
    code, err = run_cli(["eval", "--before", str(sd1_files.checkpoint), "--after", str(after), "--prompts",
                         str(prompts), "--out", str(tmp_path / "eval")], capsys)
    assert code == 2
    assert_one_line(err, "after.ckpt", "--allow-pickle")

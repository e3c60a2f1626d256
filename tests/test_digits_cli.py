"""`rgd demo` and `rgd bench digits` run end to end, in-process through ``rgd_core.cli.main``, at test size: a few
training steps and a few evaluation samples per digit, so each takes seconds on one CPU thread.

What is checked is what the README promises of the two commands: the JSON on stdout (one row per method with UA,
RA, FD and seconds; for the bench also the standard deviations), the two figures the demo writes
(``<out>/digits_forget<digit>_samples.png`` and ``<out>/digits_forget<digit>_losses.png``) and, for the bench, that
RGD forgets: UA rises from the original model's. A demo that stops writing either figure fails
``test_demo_prints_json_and_writes_both_figures`` (checked by removing the figure calls by hand).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from rgd_core import cli

pytestmark = pytest.mark.usefixtures("single_thread_torch")

PNG = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"ua", "ra", "fd", "seconds"}


def run(capsys, *args) -> dict:
    cli.main(list(args))
    captured = capsys.readouterr()
    return json.loads(captured.out)


def test_demo_prints_json_and_writes_both_figures(tmp_path, capsys):
    out = tmp_path / "figures"
    report_file = tmp_path / "report.json"
    table = run(capsys, "demo", "--forget-class", "3", "--steps", "3", "--samples-per-class", "2",
                "--sampling-steps", "3", "--json", "--out", str(out), "--report", str(report_file))

    assert list(table) == ["original", "GradDiff", "RGD"]
    for method, row in table.items():
        assert set(row) == ROW_KEYS, method
        assert 0.0 <= row["ua"] <= 1.0 and 0.0 <= row["ra"] <= 1.0 and row["fd"] >= 0.0
    assert table["original"]["seconds"] == 0.0 and table["RGD"]["seconds"] > 0.0

    samples, losses = out / "digits_forget3_samples.png", out / "digits_forget3_losses.png"
    assert sorted(p.name for p in out.iterdir()) == sorted([samples.name, losses.name])
    for figure in (samples, losses):
        assert figure.read_bytes()[:8] == PNG
        with Image.open(figure) as image:
            assert min(image.size) >= 100, (figure.name, image.size)

    report = json.loads(report_file.read_text())
    assert report["figures"] == [str(samples), str(losses)]
    assert report["forget_class"] == 3 and report["config"]["steps"] == 3
    assert [row["method"] for row in report["rows"]] == list(table)


def test_bench_digits_table_has_every_method_and_rgd_forgets(tmp_path, capsys):
    """One forgotten digit, 3 steps at a raised learning rate (the default 2e-4 needs tens of steps): the original
    model draws its zeros (UA near 0) and after RGD most of them are gone. Measured: original UA 0.0, RGD 1.0."""
    table = run(capsys, "bench", "digits", "--classes", "0", "--steps", "3", "--lr", "3e-3", "--samples-per-class",
                "6", "--sampling-steps", "10", "--json", "--report", str(tmp_path / "bench.json"))

    assert list(table) == ["original", "GradDiff", "RGD", "RGD (narrow retain)", "RGD, Adam metric"]
    for method, row in table.items():
        keys = ROW_KEYS | {"steps", "ua_forced"}
        assert set(row) == keys | {f"{key}_std" for key in keys}, method
        assert all(row[f"{key}_std"] == 0.0 for key in ROW_KEYS)  # one digit: no spread
    assert table["original"]["ua"] <= 0.2
    assert table["RGD"]["ua"] >= table["original"]["ua"] + 0.5

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["classes"] == [0]
    assert [run["ua"] for run in report["runs"]["RGD"]] == [table["RGD"]["ua"]]


def test_bench_digits_stops_when_the_digit_is_gone(tmp_path, capsys):
    """--stop-ratio makes --steps the cap: the run ends at the first probe where the forget loss has risen to the
    target, and the table says where; --methods runs only the rows asked for."""
    table = run(capsys, "bench", "digits", "--classes", "0", "--methods", "RGD", "--steps", "40", "--lr", "3e-3",
                "--stop-ratio", "1.5", "--stop-every", "2", "--samples-per-class", "4", "--sampling-steps", "5",
                "--json")
    assert list(table) == ["original", "RGD"]
    assert 2 <= table["RGD"]["steps"] < 40 and table["RGD"]["steps"] % 2 == 0
    assert table["RGD"]["ua"] >= table["original"]["ua"] + 0.5

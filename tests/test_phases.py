"""Every run reports what the user waited for per phase: seconds and model evaluations of the data phase (the model
sampling its own forget/retain data) and of training. The counts follow from the settings, so they are exact."""

import json

import pytest

from rgd_core import cli
from rgd_core.method.paired_data import drawn_pairs

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def test_rgd_unlearn_json_reports_each_phase_and_the_counts_add_up(sd1_files, tmp_path, capsys):
    args = ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "nudity", "--steps", "3", "--train-prompts", "4", "--sample-steps", "2", "--batch-size",
            "2", "--scope", "cross-attn", "--cache-dir", str(tmp_path / "cache"), "--json"]
    cli.main(args + ["--out", str(tmp_path / "first")])
    phases = json.loads(capsys.readouterr().out)["phases"]
    assert set(phases) == {"data", "training"}
    # of 4 pairs, the 3 that 3 steps of 2 draw are sampled, forget and retain, 2 sampler steps each, classifier-free
    # guidance doubling every batch
    assert len(drawn_pairs(0, 3, 4, 2)) == 3
    assert phases["data"]["evaluations"] == 2 * 3 * 2 * 2
    # each step: the forget batch and the retain batch, 2 pairs each
    assert phases["training"]["evaluations"] == 3 * 2 * 2
    assert all(values["seconds"] > 0 for values in phases.values())

    cli.main(args + ["--out", str(tmp_path / "second")])  # same model, prompts, sampler and seed: cached data
    again = json.loads(capsys.readouterr().out)["phases"]
    assert again["data"]["evaluations"] == 0 and again["training"]["evaluations"] == 3 * 2 * 2


def test_the_node_text_and_the_recipe_share_the_phase_record():
    from rgd_core.hosts.base import phase

    import torch

    phases: dict = {}
    layer = torch.nn.Linear(2, 2)
    with phase(phases, "data", layer):
        layer(torch.zeros(5, 2))
        layer(torch.zeros(3, 2))
    with phase(phases, "data", layer):  # a second pass accumulates
        layer(torch.zeros(1, 2))
    layer(torch.zeros(4, 2))  # outside any phase: not counted, and the hook is gone
    assert phases["data"]["evaluations"] == 9 and phases["data"]["seconds"] >= 0
    assert not layer._forward_hooks

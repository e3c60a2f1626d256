"""Sampling on demand (issue: time to erase): with the adaptive stop, a host whose sampling never sees the edit
samples the pairs a probe interval ahead of the training, so a run that stops early has sampled no pair it did not
train on; the data phase is still counted as data; a resumed run samples what it needs; and the SD data cache grows
by the pairs a call lacks instead of resampling."""

import contextlib

import pytest
import torch

import sd_fixtures
from recorded_calls import recorded_calls
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import UnlearningCancelled
from rgd_core.hosts.base import RecipeSettings, Trainee, run_unlearning
from rgd_core.hosts.diffusers_sd import SamplerSettings, build_paired_data
from rgd_core.method.paired_data import PairedData, drawn_pairs, rows_mask, steps_to_sample
from rgd_core.method.unlearner import PROBE_BATCHES, UnlearnConfig, Unlearner

pytestmark = pytest.mark.usefixtures("single_thread_torch")
COUNT, BATCH, STOP_AT = 64, 4, 10


class RowHost:
    """A host whose pair i is a fixed tensor made from i, sampled (one evaluation of ``evaluated_module`` per row
    and side) only when asked; it records which rows it was asked for and which the training drew."""

    prediction_type = "epsilon"
    noise_schedule = torch.linspace(0.99, 0.01, 10)

    def __init__(self, samples_while_training: bool) -> None:
        self.samples_while_training = samples_while_training
        self.evaluated_module = torch.nn.Identity()
        self.asked: list[list[int]] = []
        self.drawn: set[int] = set()

    def paired_data(self, forget_prompts, retain_prompts, seed, rows=None):
        rows = list(range(len(forget_prompts))) if rows is None else list(rows)
        self.asked.append(rows)
        latents = torch.zeros(len(forget_prompts), 1, 2, 2)
        ids = torch.zeros(len(forget_prompts), 1)
        for i in rows:
            for _side in ("forget", "retain"):
                self.evaluated_module(torch.zeros(1))
            latents[i] = torch.sin(torch.arange(4.0) + i).reshape(1, 2, 2)
            ids[i] = i
        return PairedData(latents, -latents, {"id": ids}, {"id": ids.clone()}, sampled=rows_mask(rows, len(ids)))

    @contextlib.contextmanager
    def training(self, scope, lora_rank, lora_alpha, seed):
        def predict(module, x_t, t, cond):
            self.drawn.update(int(i) for i in cond["id"][:, 0])
            return module(x_t)

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = torch.nn.Conv2d(1, 1, 1)
        yield Trainee(module, predict)


def stop_at(step: int):
    """A probe that reports the concept gone from ``step`` on (the stop rule itself is tested in test_unlearner)."""
    return lambda self: (10.0, 1.0) if self.completed_steps >= step else (1.0, 1.0)


def recipe(**changes) -> RecipeSettings:
    config = UnlearnConfig(steps=40, lr=1e-2, seed=3, stop_ratio=2.0, stop_every=5)
    return RecipeSettings(UnlearnConfig(**{**config.__dict__, **changes}), batch_size=BATCH)


def run(host, settings, **kwargs):
    prompts = [f"p{i}" for i in range(COUNT)]
    return run_unlearning(host, prompts, prompts, settings, **kwargs)


def test_steps_to_sample_is_one_probe_interval_ahead():
    adaptive = UnlearnConfig(steps=23, stop_ratio=2.0, stop_every=5)
    assert [steps_to_sample(k, adaptive) for k in (0, 4, 5, 9, 20, 22)] == [5, 5, 10, 10, 23, 23]
    # the first chunk always holds the probe's own batches
    assert steps_to_sample(0, UnlearnConfig(steps=23, stop_ratio=2.0, stop_every=1)) == PROBE_BATCHES
    assert steps_to_sample(0, UnlearnConfig(steps=23)) == 23  # fixed steps: everything at once


def test_a_run_that_stops_early_samples_only_the_pairs_it_trained_on(monkeypatch):
    monkeypatch.setattr(Unlearner, "probe_losses", stop_at(STOP_AT))
    host = RowHost(samples_while_training=True)
    result = run(host, recipe())
    assert len(result.records) == STOP_AT
    sampled = sorted(i for rows in host.asked for i in rows)
    assert sampled == sorted(set(sampled)), "a pair was sampled twice"
    assert sampled == drawn_pairs(3, STOP_AT, COUNT, BATCH) == sorted(host.drawn)
    assert len(sampled) < len(drawn_pairs(3, 40, COUNT, BATCH))
    assert len(host.asked) == STOP_AT // 5  # one chunk per probe interval
    # the chunks sampled during training are data, not training: the host's evaluations, one per row and side
    assert result.phases["data"]["evaluations"] == 2 * len(sampled)
    # training counts the module it trains: forget and retain batches of every step (the probe is patched here)
    assert result.phases["training"]["evaluations"] == STOP_AT * 2 * BATCH
    assert result.phases["data"]["seconds"] > 0 and result.phases["training"]["seconds"] > 0


def test_sampling_on_demand_trains_exactly_as_sampling_first(monkeypatch):
    monkeypatch.setattr(Unlearner, "probe_losses", stop_at(STOP_AT))
    lazy, eager = RowHost(samples_while_training=True), RowHost(samples_while_training=False)
    on_demand, first = run(lazy, recipe()), run(eager, recipe())
    assert len(eager.asked) == 1 and eager.asked[0] == drawn_pairs(3, 40, COUNT, BATCH)  # everything up front
    for a, b in zip(on_demand.module.parameters(), first.module.parameters()):
        assert torch.equal(a, b)  # the same rows hold the same values: the same computation
    assert [r["forget_loss"] for r in on_demand.records] == [r["forget_loss"] for r in first.records]


def test_fixed_steps_sample_every_drawn_pair_before_training():
    host = RowHost(samples_while_training=True)
    run(host, recipe(stop_ratio=0.0, steps=12))
    assert host.asked == [drawn_pairs(3, 12, COUNT, BATCH)]


def test_a_resumed_run_samples_what_it_needs_and_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(Unlearner, "probe_losses", stop_at(15))
    reference = run(RowHost(True), recipe())
    state = tmp_path / "state.safetensors"
    calls = {"n": 0}

    def cancel_before_step_7():
        calls["n"] += 1
        return calls["n"] > 7

    with pytest.raises(UnlearningCancelled):
        run(RowHost(True), recipe(), should_stop=cancel_before_step_7, checkpoint_path=state)
    fresh = RowHost(True)  # a new process: nothing sampled yet
    resumed = run(fresh, recipe(), resume_from=state)
    # the first chunk before training (the probe's batches are in it), then before step 7 the rest of its chunk
    assert fresh.asked[0] == drawn_pairs(3, steps_to_sample(0, recipe().config), COUNT, BATCH)
    assert sorted(fresh.asked[0] + fresh.asked[1]) == drawn_pairs(3, steps_to_sample(7, recipe().config), COUNT,
                                                                  BATCH)
    assert sorted(i for rows in fresh.asked for i in rows) == drawn_pairs(3, 15, COUNT, BATCH)
    assert len(resumed.records) == len(reference.records) == 15
    for a, b in zip(resumed.module.parameters(), reference.module.parameters()):
        assert torch.equal(a, b)


def test_the_sd_cache_grows_by_the_pairs_a_call_lacks(tmp_path):
    sd1 = PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))
    forget = [f"a nude person, view {i}" for i in range(6)]
    retain = [f"a person, view {i}" for i in range(6)]
    fast = SamplerSettings(steps=2, guidance_scale=5.0)
    with recorded_calls(sd1.unet) as calls:
        first = build_paired_data(sd1, forget, retain, settings=fast, seed=0, cache_dir=tmp_path, rows=[0, 2])
        assert sum(calls) == 2 * 2 * fast.steps * 2  # 2 rows, both sides, 2 steps, guidance doubling
        calls.clear()
        more = build_paired_data(sd1, forget, retain, settings=fast, seed=0, cache_dir=tmp_path, rows=[2, 3, 5])
        assert sum(calls) == 2 * 2 * fast.steps * 2, "only rows 3 and 5 are new"
        assert more.sampled.nonzero().flatten().tolist() == [0, 2, 3, 5]
        assert torch.equal(more.forget_latents[[0, 2]], first.forget_latents[[0, 2]])  # read back, not resampled
        assert len(list(tmp_path.iterdir())) == 1
        calls.clear()
        again = build_paired_data(sd1, forget, retain, settings=fast, seed=0, cache_dir=tmp_path, rows=[5, 0])
        assert not calls and torch.equal(again.retain_latents, more.retain_latents)
        full = build_paired_data(sd1, forget, retain, settings=fast, seed=0, cache_dir=tmp_path)
        assert sum(calls) == 2 * 2 * fast.steps * 2 and full.sampled is None  # rows 1 and 4 complete it
        reference = build_paired_data(sd1, forget, retain, settings=fast, seed=0)
        # every pair from its own noise: equal to one full sampling up to batch composition (last float bits)
        torch.testing.assert_close(full.forget_latents, reference.forget_latents, atol=1e-4, rtol=1e-4)

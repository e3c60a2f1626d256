"""A run samples only the pairs its training will draw (issue: time to erase). ``drawn_pairs`` predicts exactly the
rows the Unlearner's batches use, the host samples those rows and no others (each from its own noise, as in a full
sampling), and drawing a row that was not sampled is an error, never silent zeros."""

import pytest
import torch

import sd_fixtures
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDError
from rgd_core.hosts.diffusers_sd import SamplerSettings, build_paired_data, unlearn_sd
from rgd_core.method.paired_data import PairedData, batched_losses, drawn_pairs
from rgd_core.method.unlearner import UnlearnConfig, Unlearner, step_seed
from rgd_core.prompts import build_prompt_sets

pytestmark = pytest.mark.usefixtures("single_thread_torch")
FAST = SamplerSettings(steps=2, guidance_scale=5.0)


def tagged(count: int, sampled=None) -> PairedData:
    ids = torch.arange(count, dtype=torch.float32)[:, None]
    latents = torch.zeros(count, 1, 2, 2)
    return PairedData(latents, latents.clone(), {"id": ids}, {"id": ids.clone()}, sampled=sampled)


def drawn_by_training(data: PairedData, seed: int, steps: int, batch_size: int) -> set[int]:
    """The rows the Unlearner's losses really draw, recorded through the model call."""
    seen: set[int] = set()

    def call(model, x_t, t, cond):
        seen.update(int(i) for i in cond["id"][:, 0])
        return model(x_t)

    model = torch.nn.Conv2d(1, 1, 1)
    forget_loss, retain_loss = batched_losses(call, data, torch.linspace(0.99, 0.01, 10), "epsilon", batch_size)
    Unlearner(model, forget_loss, retain_loss, UnlearnConfig(steps=steps, lr=1e-3, seed=seed)).run()
    return seen


@pytest.mark.parametrize("seed, steps, count, batch_size", [(0, 5, 40, 3), (7, 100, 800, 8), (3, 40, 256, 16)])
def test_drawn_pairs_are_exactly_the_rows_training_draws(seed, steps, count, batch_size):
    predicted = drawn_pairs(seed, steps, count, batch_size)
    if count <= 40:
        assert set(predicted) == drawn_by_training(tagged(count), seed, steps, batch_size)
    else:  # the same draws without running a model: the Unlearner seeds each step with step_seed(seed, step)
        union = set()
        for step in range(steps):
            union.update(torch.randperm(count, generator=torch.Generator().manual_seed(step_seed(seed, step)))
                         [:batch_size].tolist())
        assert set(predicted) == union
    assert predicted == sorted(set(predicted)) and len(predicted) <= min(count, steps * batch_size)


def test_the_default_run_samples_about_two_thirds_of_its_pairs():
    # rgd unlearn's defaults: 100 steps of 8 from 800 pairs; 800 * (1 - (1 - 8/800)^100) ~ 507 are ever drawn
    assert len(drawn_pairs(0, 100, 800, 8)) == 503


def test_drawing_an_unsampled_row_is_an_error():
    sampled = torch.zeros(6, dtype=torch.bool)
    sampled[:3] = True
    with pytest.raises(RGDError, match="drawn but never sampled"):
        drawn_by_training(tagged(6, sampled), seed=0, steps=3, batch_size=4)


def test_a_run_samples_only_its_drawn_rows_each_as_a_full_sampling_would():
    sd1 = PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))
    train, _ = build_prompt_sets("nudity", train_count=12, test_count=2, seed=0)
    config = UnlearnConfig(method="rgd", steps=2, lr=1e-3, seed=0)
    rows = drawn_pairs(config.seed, config.steps, len(train), 2)
    assert 0 < len(rows) < len(train)
    phases: dict = {}
    unet, records = unlearn_sd(sd1, train, config=config, scope="cross-attn", batch_size=2, sampler=FAST,
                               phases=phases)
    # only the drawn pairs went through the UNet: both sides, 2 sampler steps, guidance doubling every batch
    assert phases["data"]["evaluations"] == 2 * len(rows) * FAST.steps * 2
    assert len(records) == 2

    full = build_paired_data(sd1, train, settings=FAST, seed=0)
    lazy = build_paired_data(sd1, train, settings=FAST, seed=0, rows=rows)
    assert lazy.sampled.nonzero().flatten().tolist() == rows
    for side in ("forget_latents", "retain_latents"):
        # the same noise per prompt as a full sampling; only the batch composition differs (last float bits)
        torch.testing.assert_close(getattr(lazy, side)[rows], getattr(full, side)[rows], atol=1e-4, rtol=1e-4)
        unsampled = [i for i in range(len(train)) if i not in rows]
        assert not getattr(lazy, side)[unsampled].any()

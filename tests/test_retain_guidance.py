"""The retain side sampled without classifier-free guidance (issue: time to erase): guidance 1 is the conditional
prediction alone, so it takes one UNet evaluation per step instead of two; the forget side keeps its guidance.
The tests check that the conditional-only path samples what guidance 1 on [uncond; cond] samples, that each side
gets its own guidance, that the data phase then counts three quarters of the evaluations, and that the setting
keys the cache (and leaves old keys alone when unset)."""

import pytest
import torch

import sd_fixtures
from recorded_calls import recorded_calls
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.hosts.base import phase
from rgd_core.hosts.diffusers_sd import SamplerSettings, _sampler_key, build_paired_data, sample_latents

pytestmark = pytest.mark.usefixtures("single_thread_torch")
FORGET = [f"a nude person, view {i}" for i in range(3)]
RETAIN = [f"a person, view {i}" for i in range(3)]
STEPS = 3


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


def test_guidance_one_samples_the_conditional_alone_in_half_the_evaluations(sd1):
    settings = SamplerSettings(steps=STEPS, guidance_scale=1.0, batch_size=8)
    with recorded_calls(sd1.unet) as sizes:
        alone = sample_latents(sd1, RETAIN, seed=2, settings=settings)
    assert sizes == [len(RETAIN)] * STEPS  # no unconditional half
    # the guided formula at scale 1 gives the same images (up to float rounding: a batch twice the size)
    guided = sample_latents(sd1, RETAIN, seed=2, settings=SamplerSettings(steps=STEPS, guidance_scale=1.0 + 1e-7,
                                                                        batch_size=8))
    torch.testing.assert_close(alone, guided, atol=1e-4, rtol=1e-4)


def test_each_side_samples_with_its_own_guidance(sd1):
    settings = SamplerSettings(steps=STEPS, guidance_scale=5.0, retain_guidance_scale=1.0, batch_size=8)
    data = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=4)
    forget = sample_latents(sd1, FORGET, seed=4, settings=SamplerSettings(steps=STEPS, guidance_scale=5.0,
                                                                        batch_size=8))
    retain = sample_latents(sd1, RETAIN, seed=4, settings=SamplerSettings(steps=STEPS, guidance_scale=1.0,
                                                                        batch_size=8))
    assert torch.equal(data.forget_latents, forget)  # same calls, same batch: the same computation
    assert torch.equal(data.retain_latents, retain)
    both_guided = build_paired_data(sd1, FORGET, RETAIN, settings=SamplerSettings(steps=STEPS, guidance_scale=5.0,
                                                                                batch_size=8), seed=4)
    assert torch.equal(both_guided.forget_latents, forget)
    assert not torch.allclose(both_guided.retain_latents, retain, atol=1e-3)


def test_the_data_phase_counts_three_quarters_of_the_evaluations(sd1):
    counts = {}
    for name, retain_guidance in (("guided", None), ("retain unguided", 1.0)):
        phases: dict = {}
        settings = SamplerSettings(steps=STEPS, guidance_scale=5.0, retain_guidance_scale=retain_guidance)
        with phase(phases, "data", sd1.unet):
            build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=0)
        counts[name] = phases["data"]["evaluations"]
    assert counts["guided"] == 2 * len(FORGET) * STEPS * 2
    assert counts["retain unguided"] == len(FORGET) * STEPS * 2 + len(RETAIN) * STEPS


def test_the_setting_keys_the_cache_and_leaves_old_keys_alone():
    plain = SamplerSettings()
    assert "retain_guidance_scale" not in _sampler_key(plain)  # keys written before the setting existed still hit
    assert _sampler_key(SamplerSettings(retain_guidance_scale=1.0))["retain_guidance_scale"] == 1.0
    assert SamplerSettings(retain_guidance_scale=1.0).for_retain().guidance_scale == 1.0
    assert plain.for_retain() is plain
    with pytest.raises(RGDInputError, match="retain-guidance"):
        SamplerSettings(retain_guidance_scale=-1.0)

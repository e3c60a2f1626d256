"""ESD, the negative-guidance baseline, on tiny random SD1/SDXL models: target, scope, determinism, learning."""

import pytest
import torch

import sd_fixtures
from rgd_core.hosts.diffusers_sd import (
    SamplerSettings,
    _unet_call,
    encode_prompts,
    guidance_conditioning,
    image_size,
    vae_scale_factor,
)
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError, UnlearningCancelled
from rgd_core.baselines.esd import ESDConfig, esd_target, run_esd

pytestmark = pytest.mark.usefixtures("single_thread_torch")

PROMPTS = ["a photo of a cat", "a cat sleeping on a sofa"]
QUICK = ESDConfig(steps=3, lr=1e-3, ddim_steps=3, batch_size=2, scope="non-cross-attn", seed=0)


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


def _state(module):
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_target_is_guidance_away_from_the_concept():
    uncond, concept = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])  # small integers: exact on any CPU
    assert torch.equal(esd_target(uncond, concept, 0.0), uncond)
    assert torch.equal(esd_target(uncond, concept, 1.0), torch.tensor([-1.0, 3.0]))


def test_edits_only_the_scope_and_never_the_input(sd1):
    before = _state(sd1.unet)
    edited, records = run_esd(sd1, PROMPTS, QUICK)
    assert [r["step"] for r in records] == [0, 1, 2]
    after = edited.state_dict()
    for name, tensor in before.items():
        assert torch.equal(sd1.unet.state_dict()[name], tensor), f"input UNet changed at {name}"
        changed = not torch.equal(after[name], tensor)
        if "attn2" in name:
            assert not changed, f"cross-attention weight {name} moved under ESD-u"
    assert any(not torch.equal(after[n], t) for n, t in before.items() if "attn2" not in n)


def test_same_seed_same_model(sd1):
    first, _ = run_esd(sd1, PROMPTS, QUICK)
    second, _ = run_esd(sd1, PROMPTS, QUICK)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_edited_model_moves_towards_the_negative_guided_target(sd1):
    cond = encode_prompts(sd1, PROMPTS)
    uncond = encode_prompts(sd1, [""]).get("encoder_hidden_states").expand(len(PROMPTS), -1, -1)
    # ESD's first point of every trajectory: pure noise at the first DDIM timestep (2 steps: t = 501).
    x_t = torch.randn((len(PROMPTS), 4, 16, 16), generator=torch.Generator().manual_seed(5))
    t = torch.tensor(501)
    with torch.no_grad():
        target = esd_target(_unet_call(sd1.unet, x_t, t, {"encoder_hidden_states": uncond}),
                            _unet_call(sd1.unet, x_t, t, cond), 10.0)

    def distance(unet):
        with torch.no_grad():
            return float((_unet_call(unet, x_t, t, cond) - target).square().mean())

    # A strong negative guidance: the random model barely depends on its text, so eta 1 would leave almost no gap.
    config = ESDConfig(steps=30, lr=2e-4, negative_guidance=10.0, ddim_steps=2, batch_size=2, scope="full", seed=1)
    edited, _ = run_esd(sd1, PROMPTS, config)
    assert distance(edited) < 0.85 * distance(sd1.unet)  # measured 0.69x


def test_sdxl_edit_changes_only_its_scope_and_moves_towards_the_target():
    """ESD-x on SDXL (size-conditioned UNet, two text encoders, zero unconditional branch): the input UNet is
    untouched, only cross-attention weights move, and the concept prediction at a fixed point of the trajectory gets
    closer to the frozen model's negatively guided one."""
    sdxl = PipelineComponents(family="sdxl", **sd_fixtures.build_components("sdxl"))
    height, width = image_size(sdxl, SamplerSettings())
    cond, uncond = guidance_conditioning(sdxl, PROMPTS, height, width)
    uncond = {key: value.expand(len(PROMPTS), *value.shape[1:]) for key, value in uncond.items()}
    # the first point of every ESD trajectory: pure noise at the first DDIM timestep of 2 steps
    factor = vae_scale_factor(sdxl)
    x_t = torch.randn((len(PROMPTS), 4, height // factor, width // factor), generator=torch.Generator().manual_seed(5))
    t = torch.tensor(int(_make_scheduler_timesteps(sdxl, 2)[0]))
    with torch.no_grad():
        target = esd_target(_unet_call(sdxl.unet, x_t, t, uncond), _unet_call(sdxl.unet, x_t, t, cond), 10.0)

    def distance(unet):
        with torch.no_grad():
            return float((_unet_call(unet, x_t, t, cond) - target).square().mean())

    before = _state(sdxl.unet)
    config = ESDConfig(steps=6, lr=1e-3, negative_guidance=10.0, ddim_steps=2, batch_size=2, scope="cross-attn",
                       seed=1)
    edited, records = run_esd(sdxl, PROMPTS, config)
    assert [r["step"] for r in records] == list(range(6)) and edited is not sdxl.unet
    after = edited.state_dict()
    for name, tensor in before.items():
        assert torch.equal(sdxl.unet.state_dict()[name], tensor), f"input UNet changed at {name}"
        if "attn2" not in name:
            assert torch.equal(after[name], tensor), f"{name} moved under ESD-x"
    assert any(not torch.equal(after[n], t) for n, t in before.items() if "attn2" in n)
    assert distance(edited) < 0.95 * distance(sdxl.unet)  # measured 0.82-0.85x (4-8 steps)


def _make_scheduler_timesteps(components, steps):
    from rgd_core.hosts.diffusers_sd import _make_scheduler

    scheduler = _make_scheduler(components, "ddim")
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_bad_input_and_cancel(sd1):
    with pytest.raises(RGDInputError, match="scope"):
        ESDConfig(scope="everything")
    with pytest.raises(RGDInputError, match="prompt"):
        run_esd(sd1, [], QUICK)
    with pytest.raises(UnlearningCancelled):
        run_esd(sd1, PROMPTS, QUICK, should_stop=lambda: True)


def test_progress_bar_takes_esd_records(sd1):
    from rgd_core.progress import progress_bar

    _, records = run_esd(sd1, PROMPTS, ESDConfig(steps=2, lr=1e-3, ddim_steps=2), callbacks=[progress_bar(2, "esd")])
    assert len(records) == 2

"""The flow-matching objective (SD3, Flux, the flow shapes model) against hand computations.

x_sigma = (1 - sigma) x0 + sigma eps, target eps - x0, sigma drawn uniformly from the model's own shifted table;
a host's x0 denoiser turned back into the velocity; the scopes on transformer (MMDiT / Flux) weight names; the
diffusers host's flow call and sampler.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rgd_core.edits.scopes import in_scope
from rgd_core.hosts.denoiser import predict_from_denoiser, velocity_from_denoiser
from rgd_core.method.losses import denoising_error, flow_interpolate, flow_sigmas, flow_velocity, shift_sigma


def test_path_and_velocity_by_hand():
    x0, noise = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 3.0]])
    x = flow_interpolate(x0, noise, torch.tensor([0.25]))
    assert x.tolist() == [[0.75 * 2.0 + 0.25 * 0.5, 0.75 * -1.0 + 0.25 * 3.0]]
    assert flow_velocity(x0, noise).tolist() == [[0.5 - 2.0, 3.0 + 1.0]]
    # the path's derivative in sigma is the velocity
    h = 1e-3
    slope = (flow_interpolate(x0, noise, torch.tensor([0.25 + h])) - x) / h
    torch.testing.assert_close(slope, flow_velocity(x0, noise), atol=1e-3, rtol=1e-3)


def test_shift_as_sd3_and_flux_define_it():
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)  # SD3: shift 3
    assert shift_sigma(torch.tensor(0.3), 1.0).item() == pytest.approx(0.3)
    mu = 1.15  # Flux dev: e^mu / (e^mu + 1/t - 1) is the same map with s = e^mu
    for t in (0.01, 0.2, 0.5, 0.9):
        flux = math.exp(mu) / (math.exp(mu) + 1 / t - 1)
        assert shift_sigma(torch.tensor(t, dtype=torch.float64), math.exp(mu)).item() == pytest.approx(flux)


def test_flow_tables_match_sd3_and_flux_first_levels():
    sd3 = flow_sigmas(1000, 3.0)
    assert sd3.shape == (1000,) and sd3[-1].item() == pytest.approx(1.0)
    assert sd3[0].item() == pytest.approx(3 * 0.001 / (1 + 2 * 0.001))  # 0.002994
    flux = flow_sigmas(10000, math.exp(1.15))
    assert flux[0].item() == pytest.approx(0.000316, abs=1e-6)
    assert bool((sd3[1:] > sd3[:-1]).all())


def test_flow_denoising_error_is_the_velocity_mse_at_drawn_table_levels():
    table = flow_sigmas(1000, 3.0)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = {}

    def model(x, sigma):
        seen["x"], seen["sigma"] = x, sigma
        return torch.zeros_like(x) + 0.1

    error = denoising_error(model, x0, table, torch.Generator().manual_seed(7), "flow")
    # by hand, with the documented draw order: t first, then the noise
    generator = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (3,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = table[t]
    torch.testing.assert_close(seen["sigma"], sigma)
    torch.testing.assert_close(seen["x"], (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(error, (0.1 - (noise - x0)).square())


def test_velocity_from_an_x0_denoiser():
    """ComfyUI hands a flow model out as D(x, sigma) = x - sigma v; (x - D) / sigma gives v back."""
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    sigma = torch.tensor([0.9, 0.05])
    x = flow_interpolate(x0, noise, sigma)
    exact = lambda x_in, s, cond: x0  # noqa: E731  (a perfect denoiser)
    for predict in (velocity_from_denoiser(exact), predict_from_denoiser(exact, flow_sigmas(), "flow")):
        torch.testing.assert_close(predict(x, sigma, {}), flow_velocity(x0, noise), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, scopes", [
    # ComfyUI / BFL Flux
    ("diffusion_model.double_blocks.3.img_attn.qkv.weight", {"lora", "cross-attn", "full"}),
    ("diffusion_model.double_blocks.3.txt_attn.proj.weight", {"lora", "cross-attn", "full"}),
    ("diffusion_model.double_blocks.3.img_attn.qkv.bias", {"cross-attn", "full"}),
    ("diffusion_model.double_blocks.3.img_mlp.0.weight", {"non-cross-attn", "full"}),
    ("diffusion_model.double_blocks.3.img_mod.lin.weight", {"non-cross-attn", "full"}),
    ("diffusion_model.single_blocks.7.linear1.weight", {"lora", "cross-attn", "full"}),
    ("diffusion_model.single_blocks.7.modulation.lin.weight", {"non-cross-attn", "full"}),
    ("diffusion_model.img_in.weight", {"non-cross-attn", "full"}),
    # SD3 / SD3.5 (MMDiT): attn2 is the image's own self-attention, not where text enters
    ("diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", {"lora", "cross-attn", "full"}),
    ("diffusion_model.joint_blocks.0.context_block.attn.proj.weight", {"lora", "cross-attn", "full"}),
    ("diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight", {"lora", "non-cross-attn", "full"}),
    ("diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight", {"non-cross-attn", "full"}),
    # diffusers' transformer layout
    ("transformer_blocks.2.attn.to_q.weight", {"lora", "cross-attn", "full"}),
    ("transformer_blocks.2.attn.add_k_proj.weight", {"lora", "cross-attn", "full"}),
    ("transformer_blocks.2.attn.to_out.0.weight", {"lora", "cross-attn", "full"}),
    ("transformer_blocks.2.attn2.to_q.weight", {"lora", "non-cross-attn", "full"}),
    ("transformer_blocks.2.ff.net.0.proj.weight", {"non-cross-attn", "full"}),
    ("single_transformer_blocks.0.attn.to_k.weight", {"lora", "cross-attn", "full"}),
    ("single_transformer_blocks.0.proj_mlp.weight", {"lora", "cross-attn", "full"}),  # linear1's MLP rows
    # an SD UNet keeps its meaning: attn2 inside the UNet's transformer blocks is cross-attention
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight", {"lora", "cross-attn", "full"}),
    ("input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight", {"lora", "non-cross-attn", "full"}),
])
def test_scopes_on_transformer_denoisers(name, scopes):
    assert {scope for scope in ("lora", "cross-attn", "non-cross-attn", "full") if in_scope(name, scope)} == scopes


class VelocityOf(torch.nn.Module):
    """A stand-in diffusers network whose output is the exact velocity towards ``target`` (x0) at timestep
    1000 sigma: v = (x - x0) / sigma, whatever the conditioning."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.config = SimpleNamespace(sample_size=4, in_channels=2)
        self.anchor = torch.nn.Parameter(torch.zeros(0))
        self.seen = []

    @property
    def dtype(self):
        return torch.float32

    def forward(self, x, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        sigma = torch.as_tensor(timestep, dtype=x.dtype).reshape(-1, 1, 1, 1) / 1000
        self.seen.append(torch.as_tensor(timestep).flatten()[0].item())
        # CFG runs [uncond; cond] in one batch: both halves point at the same x0
        target = self.target.repeat(2, 1, 1, 1) if x.shape[0] == 2 * len(self.target) else self.target[: len(x)]
        return SimpleNamespace(sample=(x - target) / sigma)


def test_diffusers_host_trains_and_samples_a_flow_model():
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    from rgd_core.checkpoints.load import PipelineComponents
    from rgd_core.hosts import diffusers_sd

    target = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    net = VelocityOf(target)
    parts = PipelineComponents("sd1", net, SimpleNamespace(config=SimpleNamespace(block_out_channels=(2,))), None,
                               None, FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    assert parts.prediction_type == "flow"
    torch.testing.assert_close(diffusers_sd.noise_schedule(parts), flow_sigmas(1000, 3.0))
    # the training call gives the network sigma as diffusers' flow models take it: timestep = 1000 sigma
    out = diffusers_sd.model_call(parts)(net, torch.zeros(1, 2, 4, 4), torch.tensor([0.25]), {
        "encoder_hidden_states": torch.zeros(1, 1, 1)})
    assert net.seen[-1] == pytest.approx(250.0) and out.shape == (1, 2, 4, 4)
    # Euler along a straight path is exact: sampling lands on the x0 the network points at
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    cond = {"encoder_hidden_states": torch.zeros(2, 1, 1)}
    settings = diffusers_sd.SamplerSettings(steps=4, guidance_scale=3.0, scheduler="euler")
    sample = diffusers_sd._denoise(parts, noise, cond, {"encoder_hidden_states": torch.zeros(1, 1, 1)}, settings)
    torch.testing.assert_close(sample, target, atol=1e-5, rtol=1e-5)
    assert net.seen[-4:] == pytest.approx([1000.0, 1000 * 0.9, 1000 * 0.75, 1000 * 0.5])  # shift 3 on 1, .75, .5, .25
    with pytest.raises(Exception, match="euler"):
        diffusers_sd._denoise(parts, noise, cond, cond, diffusers_sd.SamplerSettings(steps=2, scheduler="dpm++2m"))


@pytest.mark.parametrize("keys, name", [
    (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.img_in.weight"], "Flux.1"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "Flux.1"),
    (["single_transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.add_q_proj.weight"], "Flux.1"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "SD3.x"),
    (["transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight"], "SD3.x"),
])
def test_rgd_unlearn_names_a_flow_model_it_cannot_read_and_says_where_to_erase_it(keys, name):
    from rgd_core.checkpoints.load import detect_family
    from rgd_core.errors import RGDInputError

    with pytest.raises(RGDInputError, match=f"This is a {name} model.*RGD Unlearn node"):
        detect_family(keys)

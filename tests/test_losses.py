"""rgd_core.method.losses checked against independent references.

- Noising and the two targets (epsilon, v) against diffusers' own DDPMScheduler.add_noise / get_velocity, on random
  tensors, three schedules (linear, scaled_linear, squaredcos_cap_v2) and random timesteps that include 0 and T-1;
  the same targets reached through the two places that build them for training: ``denoising_error`` (headless and,
  through ``batched_losses``, in-graph) and ``predict_from_denoiser`` (a host's x0 denoiser turned back into the
  model's own epsilon / v). A v target with a swapped sign fails ``test_velocity_matches_diffusers``,
  ``test_denoising_error_targets_match_diffusers`` and the SD-backend test (checked by breaking ``losses.velocity``
  by hand), and one in ``predict_from_denoiser`` fails ``test_predict_from_denoiser_gives_diffusers_targets...``.
- ``Truncation.forget_objective`` unit by unit: skip at exactly m keeps the ascent (the ``<=`` boundary; a ``<``
  fails ``test_skip_keeps_the_ascent_at_exactly_m``), one float above m drops it with a zero gradient, and the
  element-wise mode is the mean of min((D - y)^2, alpha) with no gradient from elements above alpha.

Tolerances: diffusers computes in the sample dtype with ``** 0.5``, rgd_core with ``.sqrt()`` and another operation
order, so the results agree to float32 round-off, not bit for bit.
"""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import DDPMScheduler

from rgd_core.hosts.denoiser import predict_from_denoiser
from rgd_core.method.losses import Truncation, add_noise, denoising_error, velocity

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
T = 1000


def scheduler(schedule: str, prediction_type: str = "epsilon") -> DDPMScheduler:
    if schedule == "scaled_linear":  # Stable Diffusion's betas
        return DDPMScheduler(num_train_timesteps=T, beta_start=0.00085, beta_end=0.012, beta_schedule=schedule,
                             prediction_type=prediction_type)
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, prediction_type=prediction_type)


def draws(seed: int, batch: int = 6, shape=(4, 8, 8)):
    """x0, noise and timesteps with the two ends of the schedule always among them."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *shape, generator=generator)
    noise = torch.randn(batch, *shape, generator=generator)
    t = torch.randint(1, T - 1, (batch,), generator=generator)
    t[0], t[1] = 0, T - 1
    return x0, noise, t


def close(actual, expected):
    # float32 round-off of two formulas for the same value (see the module docstring)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("seed", [0, 1])
def test_add_noise_matches_diffusers(schedule, seed):
    reference = scheduler(schedule)
    x0, noise, t = draws(seed)
    close(add_noise(x0, noise, reference.alphas_cumprod, t), reference.add_noise(x0, noise, t))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("seed", [0, 1])
def test_velocity_matches_diffusers(schedule, seed):
    reference = scheduler(schedule)
    x0, noise, t = draws(seed)
    expected = reference.get_velocity(x0, noise, t)
    close(velocity(x0, noise, reference.alphas_cumprod, t), expected)


class Recorder:
    """A model that answers a fixed random prediction and records what it was asked."""

    def __init__(self, like: torch.Tensor, seed: int = 7):
        self.prediction = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
        self.calls = []

    def __call__(self, x_t, t):
        self.calls.append((x_t.clone(), t.clone()))
        return self.prediction


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_error_targets_match_diffusers(schedule, prediction_type):
    """``denoising_error`` draws t then the noise from the step generator (its documented contract: both come from
    ``generator`` only); replaying those draws gives diffusers' x_t and target for the same t and noise."""
    reference = scheduler(schedule, prediction_type)
    x0 = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(3))  # 64 draws of t
    model = Recorder(x0)
    error = denoising_error(model, x0, reference.alphas_cumprod, torch.Generator().manual_seed(11), prediction_type)

    replay = torch.Generator().manual_seed(11)
    t = torch.randint(0, T, (x0.shape[0],), generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    (x_t, seen_t), = model.calls
    assert torch.equal(seen_t, t)
    close(x_t, reference.add_noise(x0, noise, t))
    target = noise if prediction_type == "epsilon" else reference.get_velocity(x0, noise, t)
    close(error, (model.prediction - target).square())


def test_denoising_error_refuses_other_parameterisations():
    x0 = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="prediction_type"):
        denoising_error(lambda x_t, t: x_t, x0, scheduler("linear").alphas_cumprod, torch.Generator(), "sample")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_from_denoiser_gives_diffusers_targets_for_a_perfect_denoiser(schedule, prediction_type):
    """A host's denoiser that returns the true x0 must be turned into exactly the diffusers target: the noise for
    epsilon models, get_velocity for v models (the in-graph backend trains on this)."""
    reference = scheduler(schedule, prediction_type)
    x0, noise, t = draws(5)
    abar = reference.alphas_cumprod
    x_t = reference.add_noise(x0, noise, t)
    sigmas = ((1 - abar) / abar).sqrt()

    def oracle(x, sigma, cond):  # k-diffusion form: x = x0 + sigma * eps
        torch.testing.assert_close(sigma, sigmas[t], rtol=1e-5, atol=0)  # float32 table vs float32 table
        return cond["x0"]

    predict = predict_from_denoiser(oracle, abar, prediction_type)
    expected = noise if prediction_type == "epsilon" else reference.get_velocity(x0, noise, t)
    # eps = (x - x0) / sigma loses ulp(x) / sigma_min of accuracy at t = 0 (about 2e-5 for squaredcos_cap_v2)
    torch.testing.assert_close(predict(x_t, t, {"x0": x0}), expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_sd_backend_trains_the_schedulers_parameterisation(monkeypatch, prediction_type):
    """``diffusers_sd.paired_losses`` reads the target type and the schedule from the model's scheduler."""
    from rgd_core.hosts import diffusers_sd
    from rgd_core.method.paired_data import PairedData

    reference = scheduler("scaled_linear", prediction_type)
    # three copies of one latent: whatever rows the batch draws, x0 is known (t and noise still differ per row)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1).clone()
    data = PairedData(latents, latents.clone(), {"c": torch.zeros(3)}, {"c": torch.zeros(3)})
    seen = []

    class Zero(torch.nn.Module):
        dtype = torch.float32

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))  # where the backend reads the device from

        def forward(self, x_t, t):
            seen.append((x_t, t))
            return torch.zeros_like(x_t)

    monkeypatch.setattr(diffusers_sd, "_unet_call", lambda unet, x, t, cond: unet(x, t))
    components = types.SimpleNamespace(scheduler=reference, prediction_type=reference.config.prediction_type)
    forget_loss, _ = diffusers_sd.paired_losses(components, data, batch_size=3)
    step = torch.Generator().manual_seed(4)
    error = forget_loss(Zero(), step)

    replay = torch.Generator().manual_seed(4)
    t = torch.randint(0, T, (3,), generator=replay)
    noise = torch.randn((3, 4, 4, 4), generator=replay)
    x0 = latents
    close(seen[0][0], reference.add_noise(x0, noise, t))
    target = noise if prediction_type == "epsilon" else reference.get_velocity(x0, noise, t)
    close(error, target.square())


# --- truncation ----------------------------------------------------------------------------------------------------


def parameter_error(values):
    """error = 1 * p for a leaf p: the error holds exactly ``values`` (float32) and d(error_i)/dp_i = 1."""
    p = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    return p, p * 1.0


def test_none_is_the_plain_mean():
    _, error = parameter_error([0.5, 1.5, 4.0])
    loss, objective, active = Truncation("none").forget_objective(error)
    assert float(loss.detach()) == pytest.approx(2.0) and torch.equal(objective, loss) and bool(active)


@pytest.mark.parametrize("m, values", [(0.5, [0.25, 0.75]), (1.125, [1.0, 1.25]), (1.125, [1.125] * 3)])
def test_skip_keeps_the_ascent_at_exactly_m(m, values):
    """The paper skips the ascent when the forget loss *exceeds* m: a batch loss of exactly m still ascends.
    (m and the errors are exact in float32, so the batch mean is exactly m.)"""
    p, error = parameter_error(values)
    loss, objective, active = Truncation("skip", m).forget_objective(error)
    assert float(loss.detach()) == m
    assert bool(active) is True
    objective.backward()
    torch.testing.assert_close(p.grad, torch.full_like(p, 1 / len(values)))  # the gradient of the plain mean


@pytest.mark.parametrize("m", [0.5, 1.125])
def test_skip_drops_the_ascent_just_above_m(m):
    m32 = torch.tensor(m, dtype=torch.float32)
    above = float(torch.nextafter(m32, torch.tensor(float("inf"))))  # the next float32 above m
    p, error = parameter_error([above, above])
    loss, objective, active = Truncation("skip", m).forget_objective(error)
    assert float(loss.detach()) == above > m  # reported as it is
    assert bool(active) is False and float(objective.detach()) == 0.0
    objective.backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_elementwise_is_the_mean_of_the_clamped_error_with_no_gradient_above_alpha():
    alpha = 0.1
    values = [0.01, 0.05, 0.09, 0.2, 3.0]
    p, error = parameter_error(values)
    loss, objective, active = Truncation("elementwise", alpha).forget_objective(error)
    assert float(loss.detach()) == pytest.approx(sum(values) / 5, rel=1e-6)  # the reported loss is not truncated
    assert float(objective.detach()) == pytest.approx(sum(min(v, alpha) for v in values) / 5, rel=1e-6)
    assert bool(active) is True
    objective.backward()
    below = torch.tensor([v < alpha for v in values])
    torch.testing.assert_close(p.grad[below], torch.full((int(below.sum()),), 1 / 5))
    assert torch.equal(p.grad[~below], torch.zeros(int((~below).sum())))


@pytest.mark.parametrize("mode,threshold", [("skip", 0.0), ("elementwise", -1.0), ("clip", 1.0)])
def test_bad_truncation_is_refused(mode, threshold):
    with pytest.raises(ValueError):
        Truncation(mode, threshold)

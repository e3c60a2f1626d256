"""Trajectory reuse (issue: time to erase): a sampled trajectory gives, besides its x0, noisy latents it passed
through, kept at steps chosen from the pair's own seed; training takes them at their own timesteps with the noise
they imply. The tests check that the kept latents are the ones the sampler passed through, that training draws the
promised points and timesteps, and that the points survive the cache."""

import pytest
import torch

import sd_fixtures
from recorded_calls import recorded_calls
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.hosts.diffusers_sd import SamplerSettings, build_paired_data, kept_steps, noise_schedule
from rgd_core.method.losses import add_noise, denoising_error, flow_interpolate, flow_sigmas, implied_noise
from rgd_core.method.paired_data import PairedData, batch_indices, batched_losses, point_choice, prompt_seed

pytestmark = pytest.mark.usefixtures("single_thread_torch")
FORGET = [f"a nude person, view {i}" for i in range(5)]
RETAIN = [f"a person, view {i}" for i in range(5)]
STEPS, POINTS = 4, 2


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


def test_implied_noise_inverts_the_forward_process():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 8, 8, generator=generator), torch.randn(6, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 100, 400, 700, 950, 999])
    abar = torch.linspace(0.9999, 0.005, 1000)
    x_t = add_noise(x0, eps, abar, t)
    torch.testing.assert_close(implied_noise(x0, x_t, abar[t], "epsilon"), eps, atol=1e-3, rtol=1e-3)
    sigmas = flow_sigmas(1000, shift=3.0)
    x_sigma = flow_interpolate(x0, eps, sigmas[t])
    torch.testing.assert_close(implied_noise(x0, x_sigma, sigmas[t], "flow"), eps, atol=1e-3, rtol=1e-3)


def test_kept_points_are_the_latents_the_sampler_passed_through(sd1):
    seen = []  # (t, x_t) of every UNet call: the [uncond; cond] batch holds each latent twice
    handle = sd1.unet.register_forward_hook(
        lambda module, args, output: seen.append((int(args[1]), args[0][: args[0].shape[0] // 2].clone())))
    settings = SamplerSettings(steps=STEPS, guidance_scale=5.0, trajectory_points=POINTS, batch_size=8)
    try:
        data = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=3)
    finally:
        handle.remove()
    assert data.points_per_pair == POINTS
    assert data.forget_points.shape == (len(FORGET), POINTS, *data.forget_latents.shape[1:])
    forget_calls = seen[:STEPS]  # the forget side is one batch of 5, sampled first
    for pair in range(len(FORGET)):
        steps = kept_steps(prompt_seed(3, pair), STEPS, POINTS)
        for j, step in enumerate(steps.tolist()):
            t, x_t = forget_calls[step]
            assert int(data.point_times[pair, j]) == t
            assert torch.equal(data.forget_points[pair, j], x_t[pair])
    # both sides of a pair keep the same steps, and a pair keeps them when sampled alone (its seed, not its batch)
    assert torch.equal(data.point_times, torch.stack([torch.tensor([seen[s][0] for s in kept_steps(
        prompt_seed(3, pair), STEPS, POINTS).tolist()]) for pair in range(len(FORGET))]))
    alone = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=3, rows=[4])
    assert torch.equal(alone.point_times[4], data.point_times[4])
    torch.testing.assert_close(alone.retain_points[4], data.retain_points[4], atol=1e-4, rtol=1e-4)


def test_training_draws_the_promised_points_at_their_timesteps():
    count, points = 12, 3
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(count, 2, 4, 4, generator=generator)
    kept = torch.randn(count, points, 2, 4, 4, generator=generator)
    times = torch.randint(0, 50, (count, points), generator=generator)
    cond = {"id": torch.arange(count, dtype=torch.float32)[:, None]}
    with_points = PairedData(x0, -x0, cond, dict(cond), forget_points=kept, retain_points=-kept, point_times=times)
    plain = PairedData(x0, -x0, cond, dict(cond))
    schedule = torch.linspace(0.999, 0.01, 50)
    calls = []

    def call(model, x_t, t, batch_cond):
        calls.append((x_t.clone(), t.clone(), batch_cond["id"][:, 0].long()))
        return x_t * 0.5

    forget, retain = batched_losses(call, with_points, schedule, "epsilon", batch_size=6)
    plain_forget, _ = batched_losses(call, plain, schedule, "epsilon", batch_size=6)
    step = torch.Generator().manual_seed(1234)
    forget(None, step)
    retain(None, step)
    plain_forget(None, torch.Generator().manual_seed(1234))
    (x_f, t_f, rows), (x_r, t_r, rows_r), (x_plain, t_plain, _) = calls
    choice = point_choice(torch.Generator().manual_seed(1234), 6, points)
    assert torch.equal(rows, batch_indices(torch.Generator().manual_seed(1234), count, 6)) and torch.equal(rows,
                                                                                                           rows_r)
    assert 0 < int((choice > 0).sum()) < 6, "this seed mixes x0 rows and trajectory rows"
    for i, (row, j) in enumerate(zip(rows.tolist(), choice.tolist())):
        if j == 0:  # x0 with fresh noise and t: exactly what the run without points draws
            assert t_f[i] == t_plain[i] and torch.equal(x_f[i], x_plain[i])
        else:  # the kept latent, at its own timestep, on both sides of the pair
            assert t_f[i] == times[row, j - 1] == t_r[i]
            torch.testing.assert_close(x_f[i], kept[row, j - 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(x_r[i], -kept[row, j - 1], atol=1e-5, rtol=1e-5)


def test_the_target_at_a_point_is_the_noise_it_implies():
    generator = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    sigmas = flow_sigmas(100)
    t = torch.tensor([10, 50, 99])
    x_sigma = flow_interpolate(x0, eps, sigmas[t])
    # a model that predicts the true velocity has zero error at trajectory points, whatever the generator draws
    error = denoising_error(lambda x, s: eps - x0, x0, sigmas, torch.Generator().manual_seed(0), "flow",
                            points=(x_sigma, t))
    assert float(error.abs().max()) < 1e-5


def test_points_are_cached_and_grow_with_the_pairs(sd1, tmp_path):
    settings = SamplerSettings(steps=STEPS, guidance_scale=5.0, trajectory_points=POINTS)
    first = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=0, cache_dir=tmp_path, rows=[1, 3])
    with recorded_calls(sd1.unet) as calls:
        more = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=0, cache_dir=tmp_path, rows=[3, 4])
        assert len(calls) == 2 * STEPS, "only pair 4 is sampled (both sides, one batch each)"
        calls.clear()
        again = build_paired_data(sd1, FORGET, RETAIN, settings=settings, seed=0, cache_dir=tmp_path, rows=[1, 4])
        assert not calls
    assert torch.equal(again.forget_points[1], first.forget_points[1])
    assert torch.equal(again.point_times, more.point_times) and again.point_times[[1, 3, 4]].min() >= 0
    # x0 only keeps the cache key it always had; points make a new file
    build_paired_data(sd1, FORGET, RETAIN, settings=SamplerSettings(steps=STEPS, guidance_scale=5.0), seed=0,
                      cache_dir=tmp_path, rows=[0])
    assert len(list(tmp_path.iterdir())) == 2


def test_trajectory_points_are_checked():
    with pytest.raises(RGDInputError, match="between 0 and"):
        SamplerSettings(steps=4, trajectory_points=5)


def test_every_step_kept_gives_the_samplers_timesteps(sd1):
    """The kept times are the sampler's own timesteps, indices of the schedule training draws from."""
    import diffusers

    settings = SamplerSettings(steps=STEPS, guidance_scale=5.0, trajectory_points=STEPS)
    data = build_paired_data(sd1, FORGET[:1], RETAIN[:1], settings=settings, seed=0)
    scheduler = diffusers.DDIMScheduler.from_config(sd1.scheduler.config)
    scheduler.set_timesteps(STEPS)
    assert data.point_times[0].tolist() == scheduler.timesteps.tolist()
    assert int(data.point_times.max()) < noise_schedule(sd1).shape[0]

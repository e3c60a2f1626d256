"""The diffusers Stable Diffusion backend on tiny random SD1/SDXL models: data, cache, paired batches, scopes.

The models come from ``sd_fixtures.build_components`` (no files, no network); sampling uses two or three steps, so
the whole file runs in seconds on a CPU.
"""

import dataclasses

import pytest
import torch

import sd_fixtures
from recorded_calls import recorded_calls
from rgd_core.edits.scopes import scope_filter
from rgd_core.hosts.diffusers_sd import (
    PAPER_NUDITY_SD14,
    SamplerSettings,
    build_paired_data,
    encode_prompts,
    paired_losses,
    paper_nudity_sd14_config,
    sample_latents,
    unlearn_sd,
)
from rgd_core.method.paired_data import PairedData, batch_indices
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.prompts import build_prompt_sets, prompt_sets_from_inputs
from rgd_core.method.unlearner import UnlearnConfig

FAST = SamplerSettings(steps=2, guidance_scale=5.0)
# Truncation off and a large learning rate, so that two steps visibly move every trainable tensor.
QUICK = UnlearnConfig(method="rgd", steps=2, lr=1e-3, retain_weight=1.6, seed=0)


pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


@pytest.fixture(scope="module")
def prompts():
    train, _ = build_prompt_sets("nudity", train_count=4, test_count=2, seed=0)
    return train


@pytest.fixture(scope="module")
def data(sd1, prompts):
    return build_paired_data(sd1, prompts, settings=FAST, seed=0)


def snapshot(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


# --- data ------------------------------------------------------------------------------------------------------


def test_latents_are_deterministic_per_seed(sd1, prompts):
    forget = prompts.forget_prompts
    first = sample_latents(sd1, forget, seed=0, settings=FAST)
    assert first.shape == (4, 4, 16, 16)  # sample_size 16 latents: 32 px through the tiny VAE's factor 2
    assert torch.isfinite(first).all()
    assert torch.equal(first, sample_latents(sd1, forget, seed=0, settings=FAST))
    assert not torch.allclose(first, sample_latents(sd1, forget, seed=1, settings=FAST))
    # prompt i's noise depends on (seed, i) only: a prefix, or another batching, gives the same latents
    one_by_one = dataclasses.replace(FAST, batch_size=1)
    # (equal up to float round-off: batched convolutions sum in another order)
    torch.testing.assert_close(sample_latents(sd1, forget[:2], seed=0, settings=one_by_one), first[:2],
                               atol=1e-4, rtol=1e-4)


def test_conditioning_shapes(sd1):
    cond = encode_prompts(sd1, ["a", "b", "c"], batch_size=2)
    assert set(cond) == {"encoder_hidden_states"}
    assert cond["encoder_hidden_states"].shape == (3, 77, 32)


def test_paired_data_cache_hit_and_miss(sd1, prompts, tmp_path):
    with recorded_calls(sd1.unet) as calls:
        data = build_paired_data(sd1, prompts, settings=FAST, seed=0, cache_dir=tmp_path)
        assert calls, "the first call must sample"
        files = list(tmp_path.iterdir())
        assert [f.name for f in files] == [f"{data.key}.safetensors"]  # no temporary file left behind
        calls.clear()
        again = build_paired_data(sd1, prompts, settings=FAST, seed=0, cache_dir=tmp_path)
        assert not calls, "the second call must read the cache without running the UNet"
        for key, value in data.to_tensors().items():
            assert torch.equal(value, again.to_tensors()[key]), key
        # any change of seed, settings or prompts is a miss
        changed = [
            dict(settings=FAST, seed=1, forget=prompts),
            dict(settings=dataclasses.replace(FAST, steps=3), seed=0, forget=prompts),
            dict(settings=dataclasses.replace(FAST, guidance_scale=3.0), seed=0, forget=prompts),
            dict(settings=FAST, seed=0, forget=prompts.forget_prompts[:3] + ["A nude person"]),
        ]
        for case in changed:
            calls.clear()
            retain = prompts.retain_prompts if isinstance(case["forget"], list) else None
            other = build_paired_data(sd1, case["forget"], retain, settings=case["settings"], seed=case["seed"],
                                      cache_dir=tmp_path)
            assert calls and other.key != data.key


def test_corrupt_cache_file_is_recomputed(sd1, prompts, tmp_path, data):
    (tmp_path / f"{data.key}.safetensors").write_bytes(b"not a safetensors file")
    again = build_paired_data(sd1, prompts, settings=FAST, seed=0, cache_dir=tmp_path)
    assert torch.equal(again.forget_latents, data.forget_latents)


def test_pair_i_shares_its_starting_noise(sd1, prompts, data):
    # both sides use prompt_seed(seed, i): pair i starts from the same noise and differs only by the prompt
    retain = sample_latents(sd1, prompts.retain_prompts, seed=0, settings=FAST)
    assert torch.equal(retain, data.retain_latents)  # the same 4 prompts in one batch: the same computation
    assert not torch.equal(data.forget_latents, data.retain_latents)
    assert data.forget_cond["encoder_hidden_states"].shape[0] == data.retain_latents.shape[0] == 4


# --- losses ----------------------------------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A stand-in UNet that records which examples (tagged in their conditioning) it was called with."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    @property
    def dtype(self):
        return self.weight.dtype

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
        self.seen.append(encoder_hidden_states[:, 0, 0].long().tolist())
        return dataclasses.make_dataclass("Out", ["sample"])(x * 0 + self.weight)


def tagged_data(count=10):
    ids = torch.arange(count, dtype=torch.float32)[:, None, None].expand(count, 77, 8)
    latents = torch.randn(count, 4, 2, 2)
    return PairedData(latents, latents.clone(), {"encoder_hidden_states": ids.clone()},
                      {"encoder_hidden_states": ids + 100})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_batches_pair_forget_i_with_retain_i(sd1, seed):
    forget_loss, retain_loss = paired_losses(sd1, tagged_data(), batch_size=4, paired=True)
    unet = Recorder()
    generator = torch.Generator().manual_seed(seed)
    forget_loss(unet, generator)  # consumes noise and t from the generator first, as the Unlearner does
    retain_loss(unet, generator)
    forget_ids, retain_ids = unet.seen
    assert len(set(forget_ids)) == 4
    assert [i + 100 for i in forget_ids] == retain_ids
    assert torch.equal(batch_indices(torch.Generator().manual_seed(seed), 10, 4), torch.tensor(forget_ids))


def test_unpaired_batches_are_drawn_apart(sd1):
    forget_loss, retain_loss = paired_losses(sd1, tagged_data(), batch_size=4, paired=False)
    unet = Recorder()
    differ = 0
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        forget_loss(unet, generator)
        retain_loss(unet, generator)
        forget_ids, retain_ids = unet.seen[-2:]
        differ += [i + 100 for i in forget_ids] != retain_ids
    assert differ


def test_prediction_type_is_honoured(sd1, data):
    from diffusers import DDIMScheduler

    v_model = dataclasses.replace(sd1, scheduler=DDIMScheduler.from_config(sd1.scheduler.config,
                                                                          prediction_type="v_prediction"))
    values = []
    for components in (sd1, v_model):
        forget_loss, _ = paired_losses(components, data, batch_size=2)
        with torch.no_grad():
            error = forget_loss(components.unet, torch.Generator().manual_seed(3))
        assert error.shape == (2, 4, 16, 16)
        values.append(error)
    assert not torch.allclose(values[0], values[1])


# --- scopes and training ---------------------------------------------------------------------------------------


def test_cross_attn_scope_changes_only_attn2(sd1, prompts, data):
    before = snapshot(sd1.unet)
    edited, records = unlearn_sd(sd1, prompts, config=QUICK, scope="cross-attn", batch_size=2, data=data)
    assert len(records) == 2 and all(r["ascent_active"] for r in records)
    after = edited.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all("attn2" in key for key in changed)
    assert any(key.endswith("attn2.to_k.weight") for key in changed)
    for key, value in snapshot(sd1.unet).items():  # the input model is untouched
        assert torch.equal(value, before[key]), key
    assert all(p.requires_grad for p in sd1.unet.parameters())


def test_full_scope_changes_more_than_attn2(sd1, prompts, data):
    before = snapshot(sd1.unet)
    edited, _ = unlearn_sd(sd1, prompts, config=QUICK, scope="full", batch_size=2, data=data)
    after = edited.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert any("attn2" not in key for key in changed)
    assert any("attn2" in key for key in changed)


def test_non_cross_attn_scope_leaves_attn2(sd1):
    keep = scope_filter("non-cross-attn")
    names = [name for name, p in sd1.unet.named_parameters()]
    assert any("attn2" in n for n in names)
    assert all(keep(n, None) == ("attn2" not in n) for n in names)
    assert all(scope_filter("full")(n, None) for n in names)


def test_paper_preset():
    config = paper_nudity_sd14_config()
    assert (config.method, config.retain_weight, config.truncation, config.truncation_threshold) == (
        "rgd", 1.6, "skip", 1.1)
    assert (config.lr, config.steps, config.optimizer) == (1e-5, 100, "adam")
    assert PAPER_NUDITY_SD14["batch_size"] == 8 and PAPER_NUDITY_SD14["scope"] == "full"


# --- errors ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise(sd1, prompts, data):
    with pytest.raises(RGDInputError, match="scope"):
        scope_filter("attention")
    with pytest.raises(RGDInputError, match="scope"):  # checked before any sampling
        unlearn_sd(sd1, prompts, config=QUICK, scope="attention", data=None)
    with pytest.raises(RGDInputError):
        build_paired_data(sd1, [], ["a person"], settings=FAST)
    with pytest.raises(RGDInputError):
        build_paired_data(sd1, ["a nude person"], [], settings=FAST)
    with pytest.raises(RGDInputError):
        encode_prompts(sd1, [])
    with pytest.raises(RGDInputError):
        SamplerSettings(scheduler="ancestral")
    with pytest.raises(RGDInputError):
        paired_losses(sd1, data, batch_size=0)


# --- SDXL ------------------------------------------------------------------------------------------------------


def test_sdxl_smoke(prompts):
    sdxl = PipelineComponents(family="sdxl", **sd_fixtures.build_components("sdxl"))
    settings = dataclasses.replace(FAST, scheduler="euler")
    data = build_paired_data(sdxl, prompts, settings=settings, seed=0)
    assert data.forget_latents.shape == (4, 4, 16, 16) and torch.isfinite(data.forget_latents).all()
    assert data.forget_cond["encoder_hidden_states"].shape == (4, 77, 96)
    assert data.forget_cond["text_embeds"].shape == (4, 32)
    assert data.forget_cond["time_ids"].tolist()[0] == [32, 32, 0, 0, 32, 32]
    before = snapshot(sdxl.unet)
    edited, records = unlearn_sd(sdxl, prompts, config=dataclasses.replace(QUICK, steps=1), scope="cross-attn",
                                 batch_size=2, data=data)
    assert len(records) == 1
    changed = [key for key, value in edited.state_dict().items() if not torch.equal(value, before[key])]
    assert changed and all("attn2" in key for key in changed)


@pytest.mark.parametrize("concepts, judged, per_concept", [
    ("Van Gogh; Monet", True, False), ("Van Gogh; Monet; Klimt", False, False), ("Van Gogh; Monet; Klimt", True, True),
])
def test_the_default_forget_objective_follows_the_concepts_and_the_stop(sd1, concepts, judged, per_concept):
    """Left to the default, the recipe ascends the per-concept sum for three concepts or more when a judge decides the
    stop, else one forget mean: the same weights, to the bit, as asking for that objective, and other weights than
    the other one."""
    train, _ = prompt_sets_from_inputs(concepts, "art-style", train_count=9, test_count=1, seed=0)
    data = build_paired_data(sd1, train, settings=FAST, seed=0)
    judge = (lambda module: dict.fromkeys(set(train.pair_concepts), 1.0)) if judged else None  # never sees it gone

    def trained(objective):
        config = dataclasses.replace(QUICK, forget_per_concept=objective)
        edited, _ = unlearn_sd(sd1, train, config=config, scope="cross-attn", batch_size=6, data=data, judge=judge)
        return edited.state_dict()

    default, same, other = trained(None), trained(per_concept), trained(not per_concept)
    assert all(torch.equal(default[key], same[key]) for key in default)
    assert not all(torch.equal(default[key], other[key]) for key in default)


def test_a_run_of_several_concepts_probes_each_of_them(sd1):
    train, _ = prompt_sets_from_inputs("Van Gogh; Monet", "art-style", train_count=8, test_count=2, seed=0)
    # a target never reached, probed every step: the records carry each concept's ratio
    config = dataclasses.replace(QUICK, stop_ratio=1e9, stop_every=1)
    _, records = unlearn_sd(sd1, train, config=config, scope="cross-attn", batch_size=4, sampler=FAST)
    assert len(records) == 2
    for record in records:
        assert set(record["probe_ratios"]) == {"Van Gogh", "Monet"}
        assert record["probe_ratio"] == min(record["probe_ratios"].values())

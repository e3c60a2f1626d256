"""`--precision bf16` (issue: time to erase, device efficiency): the model's forward runs under bfloat16 autocast
while sampling the data and while training, and everything a user keeps stays float32 (the latents, the weights,
the edit, the optimizer). These tests check that the forward really computes in bfloat16, that what comes out is
float32 and close to the float32 run's, that the input model is untouched, that bf16 data key their own cache
entry (float32 keys unchanged), and that the CLI carries the setting (with --gradient-checkpointing) into a run."""

import json

import pytest
import torch

import sd_fixtures
from rgd_core import cli
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.hosts.diffusers_sd import SamplerSettings, _sampler_key, build_paired_data, sample_latents, unlearn_sd
from rgd_core.method.unlearner import UnlearnConfig

pytestmark = pytest.mark.usefixtures("single_thread_torch")
PROMPTS = [f"a nude person, view {i}" for i in range(3)]
RETAIN = [f"a person, view {i}" for i in range(3)]
FP32 = SamplerSettings(steps=3, guidance_scale=5.0)
BF16 = SamplerSettings(steps=3, guidance_scale=5.0, precision="bf16")


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


def _relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _record_conv_dtypes(unet, dtypes: list):
    """Hook the UNet's first convolution: the dtype of its output, call by call (autocast computes convolutions in
    bfloat16, so this tells in which precision the forward ran). Returns the hook's handle."""
    return unet.conv_in.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))


def test_bf16_sampling_computes_in_bfloat16_and_returns_float32_latents(sd1):
    reference = sample_latents(sd1, PROMPTS, seed=1, settings=FP32)
    dtypes = []
    handle = _record_conv_dtypes(sd1.unet, dtypes)
    try:
        latents = sample_latents(sd1, PROMPTS, seed=1, settings=BF16)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert latents.dtype == torch.float32
    assert 0 < _relative_error(latents, reference) < 0.05  # bf16 rounding, not another picture


def test_bf16_training_keeps_float32_weights_and_tracks_the_float32_run(sd1):
    data = build_paired_data(sd1, PROMPTS, RETAIN, settings=FP32, seed=0)
    before = {key: value.clone() for key, value in sd1.unet.state_dict().items()}
    config = UnlearnConfig(method="rgd", steps=3, lr=1e-4, retain_weight=1.6, seed=0)
    runs = {}
    for precision in ("fp32", "bf16"):
        dtypes, handles = [], []
        # training works on a copy of the UNet: hook the copy, which ``watch`` hands over before the first step
        runs[precision] = unlearn_sd(sd1, PROMPTS, RETAIN, config=config, scope="full", batch_size=3, data=data,
                                     precision=precision,
                                     watch=lambda module: handles.append(_record_conv_dtypes(module, dtypes)))
        for handle in handles:
            handle.remove()
        assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    for precision, (unet, records) in runs.items():
        assert all(p.dtype == torch.float32 for p in unet.parameters()), precision
        assert len(records) == 3
    (fp32_unet, fp32_records), (bf16_unet, bf16_records) = runs["fp32"], runs["bf16"]
    for a, b in zip(fp32_records, bf16_records):
        assert a["forget_loss"] != b["forget_loss"]  # computed in another precision...
        assert b["forget_loss"] == pytest.approx(a["forget_loss"], rel=0.05)  # ...to the same loss
    delta_fp32 = torch.cat([(p - before[k]).flatten() for k, p in fp32_unet.state_dict().items()])
    delta_bf16 = torch.cat([(p - before[k]).flatten() for k, p in bf16_unet.state_dict().items()])
    assert delta_bf16.norm() > 0
    # Adam's first steps follow each gradient's sign, which bf16 rounding flips where a gradient is near zero
    assert torch.nn.functional.cosine_similarity(delta_fp32, delta_bf16, dim=0) > 0.7
    for key, value in sd1.unet.state_dict().items():  # the model passed in is untouched
        assert torch.equal(value, before[key]), key


def test_bf16_data_key_their_own_cache_entry():
    assert "precision" not in _sampler_key(FP32)  # keys written before the setting existed still hit
    assert _sampler_key(BF16)["precision"] == "bf16"
    with pytest.raises(RGDInputError, match="--precision"):
        SamplerSettings(precision="fp16")
    with pytest.raises(RGDInputError, match="--precision"):
        unlearn_sd(None, PROMPTS, RETAIN, precision="fp16")


def test_the_cli_runs_in_bf16_with_gradient_checkpointing(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    dtypes = set()  # of every convolution's output in the run: only the UNet has any (no VAE decode, no previews)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: dtypes.add(output.dtype) if isinstance(module, torch.nn.Conv2d) else None)
    try:
        cli.main(["unlearn", "--checkpoint", str(sd1_files.checkpoint),
                  "--config-folder", str(sd1_files.config_folder), "--concept", "nudity", "--out", str(out),
                  "--steps", "2", "--train-prompts", "4", "--sample-steps", "2", "--batch-size", "2",
                  "--scope", "cross-attn", "--lr", "1e-3", "--cache-dir", str(tmp_path / "cache"),
                  "--precision", "bf16", "--gradient-checkpointing", "--stop-ratio", "0"])
    finally:
        handle.remove()  # a global hook: never leave it to the next test
    assert dtypes == {torch.bfloat16}, "the UNet's convolutions ran in bfloat16, sampling and training"
    report = json.loads((out / "sd1-rgd-nudity.json").read_text())
    assert report["settings"]["precision"] == "bf16" and report["settings"]["gradient_checkpointing"] is True
    assert report["summary"]["steps"] == 2
    assert (out / "sd1-rgd-nudity.safetensors").exists()

"""LoRA on the tiny SD1 UNet: identity at init, training through ``unlearn_sd(scope="lora")`` moves only the
LoRA weights, merging matches the wrapped UNet, and the kohya file applies by hand to the original-layout weights."""

import copy

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import sd_fixtures
from rgd_core.hosts.diffusers_sd import SamplerSettings, build_paired_data, unlearn_sd
from rgd_core.checkpoints.export import unet_key_map, unet_to_original
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.edits.lora import (
    LoRALinear,
    add_lora,
    kohya_state_dict,
    lora_modules,
    lora_parameters_filter,
    merge_lora,
    save_kohya_lora,
)
from rgd_core.prompts import build_prompt_sets
from rgd_core.method.unlearner import UnlearnConfig

pytestmark = pytest.mark.usefixtures("single_thread_torch")

FAST = SamplerSettings(steps=2, guidance_scale=5.0)
QUICK = UnlearnConfig(method="rgd", steps=2, lr=1e-2, retain_weight=1.6, seed=0)
RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


@pytest.fixture(scope="module")
def original(sd1):
    """The fixture's original-layout (LDM) UNet weights."""
    return {key: value.clone() for key, value in sd_fixtures.unet_to_original(sd1.unet).items()}


@pytest.fixture(scope="module")
def key_map(sd1, original):
    return unet_key_map(original, dict(sd1.unet.config))


@pytest.fixture(scope="module")
def trained(sd1):
    train, _ = build_prompt_sets("nudity", train_count=2, test_count=1, seed=0)
    data = build_paired_data(sd1, train, settings=FAST, seed=0)
    base = {key: value.clone() for key, value in sd1.unet.state_dict().items()}
    unet, records = unlearn_sd(sd1, train, config=QUICK, scope="lora", batch_size=2, data=data,
                               lora_rank=RANK, lora_alpha=ALPHA)
    return unet, records, base


def inputs(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    return x, torch.tensor([10, 500]), hidden


@torch.no_grad()
def run(unet, args):
    x, t, hidden = args
    return unet(x, t, encoder_hidden_states=hidden).sample


def test_add_lora_is_identity_at_init_and_deterministic(sd1):
    unet = copy.deepcopy(sd1.unet)
    args = inputs(unet)
    before = run(unet, args)
    loras = add_lora(unet, rank=RANK, alpha=ALPHA, seed=3)
    # q, k, v, out of attn1 and attn2 in every transformer block
    suffixes = {name.split(".attn")[1][2:] for name in loras}  # "1.to_q" -> "to_q"
    assert suffixes == {"to_q", "to_k", "to_v", "to_out.0"}
    assert len(loras) == 4 * 2 * sum(".attn1." in name and name.endswith("to_q") for name in loras)
    assert any(".attn1." in name for name in loras) and any(".attn2." in name for name in loras)
    assert all(isinstance(unet.get_submodule(name), LoRALinear) for name in loras)
    assert torch.equal(run(unet, args), before)
    trainable = [name for name, p in unet.named_parameters() if lora_parameters_filter(name, p)]
    assert len(trainable) == 2 * len(loras) and all(".base." not in name for name in trainable)
    again = add_lora(copy.deepcopy(sd1.unet), rank=RANK, alpha=ALPHA, seed=3)
    assert all(torch.equal(again[n].lora_down.weight, loras[n].lora_down.weight) for n in loras)
    with pytest.raises(RGDInputError):
        add_lora(unet, rank=RANK)


def test_lora_training_moves_only_lora_weights(sd1, trained):
    unet, records, base = trained
    assert len(records) == QUICK.steps
    loras = lora_modules(unet)
    assert loras
    assert all(module.lora_up.weight.abs().sum() > 0 for module in loras.values())
    # every base weight (wrapped or not) is bit-identical; the input UNet is untouched
    for name, tensor in unet.state_dict().items():
        if ".lora_down." in name or ".lora_up." in name:
            continue
        assert torch.equal(tensor, base[name.replace(".base.", ".")]), name
    assert not lora_modules(sd1.unet)
    assert all(torch.equal(t, base[k]) for k, t in sd1.unet.state_dict().items())


def test_merge_matches_wrapped_unet(trained):
    wrapped = copy.deepcopy(trained[0])
    args = inputs(wrapped, seed=1)
    expected = run(wrapped, args)
    merged = merge_lora(copy.deepcopy(wrapped))
    assert not lora_modules(merged)
    assert set(merged.state_dict()) == set(trained[2])
    torch.testing.assert_close(run(merged, args), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, run(sd1_like(trained), args))


def sd1_like(trained):
    """A plain UNet carrying the base weights (the LoRA stripped, not merged)."""
    unet = copy.deepcopy(trained[0])
    for name, module in lora_modules(unet).items():
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent), child, module.base)
    return unet


def test_kohya_file_applies_to_original_weights(trained, original, key_map, tmp_path):
    unet, _, _ = trained
    loras = lora_modules(unet)
    path = save_kohya_lora(tmp_path / "rgd.safetensors", loras, key_map, {"rgd_method": "rgd"})
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_dim"] == str(RANK) and float(metadata["ss_network_alpha"]) == ALPHA
    assert metadata["rgd_method"] == "rgd"
    assert len(tensors) == 3 * len(loras)
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in tensors
    assert "lora_unet_output_blocks_3_1_transformer_blocks_0_attn1_to_out_0.alpha" in tensors
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v.lora_up.weight" in tensors
    # every module name is a real original-layout weight key: recover it by matching with underscores
    by_flat = {key[len("model.diffusion_model."):-len(".weight")].replace(".", "_"): key
               for key in original if key.endswith(".weight")}
    names = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert all(name.startswith("lora_unet_") and name[len("lora_unet_"):] in by_flat for name in names)

    # apply by hand to the base original-layout weights and compare with the merged UNet, exported
    merged = merge_lora(copy.deepcopy(unet))
    exported = unet_to_original(merged.state_dict(), key_map, original)
    applied = dict(original)
    for name in names:
        key = by_flat[name[len("lora_unet_"):]]
        up, down = tensors[name + ".lora_up.weight"], tensors[name + ".lora_down.weight"]
        alpha = tensors[name + ".alpha"].item()
        applied[key] = original[key] + alpha / down.shape[0] * up @ down
    assert set(exported) == set(applied)
    for key in applied:
        torch.testing.assert_close(exported[key], applied[key], atol=1e-5, rtol=0)
    assert sum(not torch.equal(exported[key], original[key]) for key in original) == len(names)

    half = kohya_state_dict(loras, key_map, dtype=torch.float16)
    assert set(half) == set(tensors) and all(t.dtype == torch.float16 for t in half.values())


# --- SD2 and SDXL ------------------------------------------------------------------------------------------------

# add_lora wraps the attention projections, which are nn.Linear in every family; 1x1 convolutions (SD1's proj_in
# and proj_out, the ResNet shortcuts) and SD2/SDXL's linear proj_in/proj_out are not wrapped, so these tests cover
# Linear layers only. Names: the SGM layout of SDXL files uses LDM's input_blocks/middle_block/output_blocks too.
KNOWN_NAMES = {
    "sd2": ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k",
            "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0"),
    "sdxl": ("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
             "lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_v"),
}


def apply_kohya(original: dict, tensors: dict) -> dict:
    """What A1111/ComfyUI do with a kohya LoRA: W + alpha / rank * up @ down on the named original-layout weight."""
    by_flat = {key[len("model.diffusion_model."):-len(".weight")].replace(".", "_"): key
               for key in original if key.endswith(".weight")}
    applied = dict(original)
    for name in {key.split(".")[0] for key in tensors}:
        key = by_flat[name[len("lora_unet_"):]]
        up, down = tensors[name + ".lora_up.weight"], tensors[name + ".lora_down.weight"]
        applied[key] = original[key] + tensors[name + ".alpha"].item() / down.shape[0] * up @ down
    return applied


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_kohya_file_reproduces_trained_weights_on_sd2_and_sdxl(family, tmp_path):
    components = PipelineComponents(family=family, **sd_fixtures.build_components(family))
    original = {key: value.clone() for key, value in sd_fixtures.unet_to_original(components.unet).items()}
    key_map = unet_key_map(original, dict(components.unet.config))
    train, _ = build_prompt_sets("nudity", train_count=2, test_count=1, seed=0)
    settings = SamplerSettings(steps=2, guidance_scale=5.0, scheduler="euler" if family == "sdxl" else "ddim")
    data = build_paired_data(components, train, settings=settings, seed=0)
    unet, records = unlearn_sd(components, train, config=QUICK, scope="lora", batch_size=2, data=data,
                               lora_rank=RANK, lora_alpha=ALPHA)
    assert len(records) == QUICK.steps

    loras = lora_modules(unet)
    blocks = [name for name, module in components.unet.named_modules()
              if type(module).__name__ == "BasicTransformerBlock"]
    assert len(loras) == 8 * len(blocks)  # q, k, v, out of attn1 and attn2 in every transformer block
    assert all(isinstance(module.base, torch.nn.Linear) for module in loras.values())
    assert not any("proj_in" in name or "proj_out" in name for name in loras)
    assert all(module.lora_up.weight.abs().sum() > 0 for module in loras.values())  # training moved them

    tensors = load_file(save_kohya_lora(tmp_path / f"{family}.safetensors", loras, key_map))
    assert all(name + ".lora_down.weight" in tensors for name in KNOWN_NAMES[family])
    applied = apply_kohya(original, tensors)
    exported = unet_to_original(merge_lora(copy.deepcopy(unet)).state_dict(), key_map, original)
    assert set(exported) == set(applied) == set(original)
    for key in applied:
        torch.testing.assert_close(exported[key], applied[key], atol=1e-5, rtol=0)
    assert sum(not torch.equal(exported[key], original[key]) for key in original) == len(loras)

"""The node pack without ComfyUI: schemas, input validation, that the nodes hand over to rgd_core, and the in-graph
maths in rgd_core.backends.denoiser (the same losses as the headless backend).

ComfyUI's V3 API is replaced by a small recording stand-in (``comfy_api.latest`` with ``io`` and ``ui``, plus
``folder_paths`` and ``comfy.samplers`` for the combo lists), installed only for the tests that need it and removed
afterwards. tests/comfyui/ runs the same nodes in a real ComfyUI.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from rgd_core.backends.denoiser import (
    EDIT_SCOPES,
    FullDelta,
    LoRADelta,
    alphas_cumprod_from_sigmas,
    in_scope,
    kohya_tensors,
    make_edit,
    paired_losses,
    predict_from_denoiser,
)
from rgd_core.backends.diffusers_sd import PairedData
from rgd_core.errors import RGDInputError
from rgd_core.losses import add_noise
from rgd_core.prompts import build_prompt_sets
from rgd_core.update_rules import UPDATE_RULES

ROOT = Path(__file__).resolve().parent.parent


# --- a stand-in for ComfyUI's V3 node API -------------------------------------------------------------------------


def _io_module():
    io = types.ModuleType("comfy_api.latest.io")

    def comfy_type(io_type):
        class Input:
            def __init__(self, id, **options):
                self.id, self.options, self.io_type = id, options, io_type

        class Output:
            def __init__(self, id=None, display_name=None, **options):
                self.id, self.display_name, self.io_type = id, display_name, io_type

        return type(io_type, (), {"io_type": io_type, "Input": Input, "Output": Output})

    for name, io_type in [("Model", "MODEL"), ("Clip", "CLIP"), ("Vae", "VAE"), ("Int", "INT"), ("Float", "FLOAT"),
                          ("String", "STRING"), ("Boolean", "BOOLEAN"), ("Combo", "COMBO"),
                          ("LoraModel", "LORA_MODEL"), ("LossMap", "LOSS_MAP"), ("Image", "IMAGE")]:
        setattr(io, name, comfy_type(io_type))
    io.Custom = comfy_type

    class Schema:
        def __init__(self, **fields):
            self.__dict__.update(dict(inputs=[], outputs=[], hidden=[], is_output_node=False), **fields)

    class ComfyNode:
        hidden = None

        @classmethod
        def GET_SCHEMA(cls):
            return cls.define_schema()

    class NodeOutput:
        def __init__(self, *args, ui=None):
            self.args, self.ui = args, ui

    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    io.Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID", prompt="PROMPT", extra_pnginfo="EXTRA_PNGINFO")
    return io


@pytest.fixture
def pack(monkeypatch):
    """The pack imported as ComfyUI imports it (a package from /__init__.py), against the stand-in API."""
    io = _io_module()
    ui = types.ModuleType("comfy_api.latest.ui")
    ui.PreviewText = lambda value, **kwargs: types.SimpleNamespace(text=value)
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui, latest.ComfyExtension = io, ui, object
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.__path__, comfy_api.latest = [], latest
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: ["model.safetensors"]
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSampler = types.SimpleNamespace(SAMPLERS=["euler", "ddim"], SCHEDULERS=["normal", "karras"])
    comfy = types.ModuleType("comfy")
    comfy.__path__, comfy.samplers = [], samplers
    for name, module in [("comfy_api", comfy_api), ("comfy_api.latest", latest), ("comfy_api.latest.io", io),
                         ("comfy_api.latest.ui", ui), ("folder_paths", folder_paths), ("comfy", comfy),
                         ("comfy.samplers", samplers)]:
        monkeypatch.setitem(sys.modules, name, module)
    original = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):  # the entry point asks whether it runs inside ComfyUI
        return object() if name == "comfy_api" else original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    spec = importlib.util.spec_from_file_location("rgd_pack_under_test", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n.startswith(spec.name)]:
        del sys.modules[name]


def schema(pack, node_id):
    return pack.NODE_CLASS_MAPPINGS[node_id].define_schema()


def inputs_of(node_schema) -> dict:
    return {item.id: item for item in node_schema.inputs}


# --- schemas ---------------------------------------------------------------------------------------------------


def test_the_pack_registers_its_rgd_nodes_in_the_rgd_category(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {"RGDCheckpointLoader", "RGDPromptSet", "RGDUnlearn", "RGDSave",
                                             "RGDEvaluate"}
    for node_id in pack.NODE_CLASS_MAPPINGS:
        node = schema(pack, node_id)
        assert node.node_id == node_id and node.category == "unlearning/RGD"
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("RGD ")


def test_unlearn_takes_comfyui_model_clip_and_prompts_and_defaults_to_lora(pack):
    node = schema(pack, "RGDUnlearn")
    inputs = inputs_of(node)
    assert [inputs[k].io_type for k in ("model", "clip", "prompt_set")] == ["MODEL", "CLIP", "RGD_PROMPT_SET"]
    assert inputs["scope"].options["options"] == list(EDIT_SCOPES) and inputs["scope"].options["default"] == "lora"
    assert set(inputs["method"].options["options"]) <= set(UPDATE_RULES)
    assert inputs["method"].options["default"] == "rgd"
    assert inputs["sampler_name"].options["options"] == ["euler", "ddim"]
    assert [out.io_type for out in node.outputs] == ["MODEL", "LORA_MODEL", "LOSS_MAP"]


def test_save_is_an_output_node_taking_the_edit_and_the_checkpoint_info(pack):
    node = schema(pack, "RGDSave")
    inputs = inputs_of(node)
    assert node.is_output_node
    assert inputs["edit"].io_type == "LORA_MODEL" and inputs["edit"].options.get("optional")
    assert inputs["checkpoint_info"].io_type == schema(pack, "RGDCheckpointLoader").outputs[3].io_type
    assert inputs["destination"].options["options"] == ["models", "output"]


# --- validation and the hand-over to rgd_core --------------------------------------------------------------------


def unlearn_widgets(**changes):
    widgets = dict(method="rgd", scope="lora", steps=100, retain_weight=1.6, truncation_m=1.1, lr=1e-4, seed=0,
                   batch_size=8, lora_rank=4, pairs=0, width=512, height=512)
    widgets.update(changes)
    return widgets


@pytest.mark.parametrize("changes, message", [
    (dict(lr=0.0), "lr > 0"),
    (dict(width=500), "multiples of 8"),
    (dict(truncation_m=-1.0), "truncation m"),
    (dict(scope="everything"), "scope must be one of"),
    (dict(method="sgd"), "method must be one of"),
])
def test_unlearn_refuses_bad_settings_with_one_line(pack, changes, message):
    result = pack.NODE_CLASS_MAPPINGS["RGDUnlearn"].validate_inputs(**unlearn_widgets(**changes))
    assert isinstance(result, str) and message in result and "\n" not in result


def test_unlearn_accepts_its_defaults_and_leaves_linked_inputs_to_run_time(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDUnlearn"]
    assert node.validate_inputs(**unlearn_widgets()) is True
    assert node.validate_inputs(**unlearn_widgets(steps=None)) is True


def test_the_truncation_widget_maps_to_skip_ascent_and_zero_turns_it_off(pack):
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    config = module.unlearn_config("rgd", 100, 1.6, 1.1, 1e-5, 3)
    assert (config.truncation, config.truncation_threshold, config.retain_weight, config.seed) == ("skip", 1.1, 1.6, 3)
    assert module.unlearn_config("graddiff", 1, 1.0, 0.0, 1e-5, 0).truncation == "none"


def test_prompt_set_node_returns_what_rgd_core_builds(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDPromptSet"]
    out = node.execute("Van Gogh", "art-style", 20, 5, 7)
    train, test = build_prompt_sets("Van Gogh", preset="art-style", train_count=20, test_count=5, seed=7)
    assert out.args == (train, test)
    assert train.pairs[0][0] in out.ui.text and "... and 15 more pairs" in out.ui.text


def test_prompt_set_node_pairs_user_lists_line_by_line(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDPromptSet"]
    out = node.execute("cat", "my lists", 1, 1, 0, forget_prompts="a cat on a sofa\na cat in snow\n",
                       retain_prompts="a sofa\nsnow\n")
    assert out.args[0].pairs == (("a cat on a sofa", "a sofa"), ("a cat in snow", "snow"))
    message = node.validate_inputs("cat", "my lists", 1, 1, 0, forget_prompts="a cat", retain_prompts="")
    assert "one retain prompt per forget prompt" in message
    message = node.validate_inputs("cat", "my lists", 1, 1, 0, forget_prompts="a cat", retain_prompts="a cat")
    assert isinstance(message, str)  # a retain prompt that still names the concept (rgd_core's check)


def test_prompt_set_node_reports_rgd_core_errors(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDPromptSet"]
    assert "{concept}" in node.validate_inputs("cat", "custom", 5, 1, 0, custom_template="a photo")
    assert isinstance(node.validate_inputs("", "nudity", 5, 1, 0), str)
    assert node.validate_inputs("nudity", "nudity", 5, 1, 0) is True


@pytest.mark.parametrize("prefix", ["../escape", "/abs/path", "rgd/../../x", "C:evil", "", "rgd/", "a//b"])
def test_save_prefix_can_never_leave_the_output_folders(pack, prefix):
    result = pack.NODE_CLASS_MAPPINGS["RGDSave"].validate_inputs(filename_prefix=prefix, save_checkpoint=True,
                                                                  save_lora=False)
    assert isinstance(result, str) and "filename prefix" in result


def test_save_accepts_sub_folders_and_needs_something_to_save(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDSave"]
    assert node.validate_inputs(filename_prefix="rgd/unlearned", save_checkpoint=True, save_lora=True) is True
    assert "nothing to save" in node.validate_inputs(filename_prefix="x", save_checkpoint=False, save_lora=False)


def test_evaluate_counts_with_rgd_core_and_grids_before_over_after(pack, monkeypatch):
    from rgd_core.evaluate import nudity

    seen = {}

    def fake_report(before, after):
        seen["before"], seen["after"] = before, after
        return {"change": {"0.6": {}}, "before": {"by_threshold": {"0.6": {"total": 3}}},
                "after": {"by_threshold": {"0.6": {"total": 0}}}}

    monkeypatch.setattr(nudity, "nudity_report", fake_report)
    before, after = torch.zeros(2, 4, 6, 3), torch.ones(2, 4, 6, 3)
    out = pack.NODE_CLASS_MAPPINGS["RGDEvaluate"].execute(before, after)
    assert seen["before"][0].dtype.name == "uint8" and seen["after"][1].max() == 255
    assert out.args[1].shape == (1, 8, 12, 3)  # two rows (before, after) of two images side by side
    assert torch.equal(out.args[1][0, :4], torch.zeros(4, 12, 3))
    assert torch.equal(out.args[1][0, 4:], torch.ones(4, 12, 3))
    assert "3 -> 0" in out.ui.text
    with pytest.raises(RGDInputError, match="batches differ"):
        pack.NODE_CLASS_MAPPINGS["RGDEvaluate"].execute(before, after[:1])


def test_nodes_hold_no_training_maths():
    for path in (ROOT / "nodes").glob("*.py"):
        text = path.read_text()
        for needle in (".backward(", "torch.optim", ".square(", "mse_loss", "randint("):
            assert needle not in text, (path.name, needle)


# --- rgd_core.backends.denoiser: the in-graph objective is the headless one ----------------------------------------


def schedule():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class ToyUNet(nn.Module):
    """prediction(x_t, t, cond) = conv(x_t) * (1 + t/1000) + cond, any parameterisation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    @property
    def dtype(self):  # what the diffusers backend asks a UNet
        return self.conv.weight.dtype

    def forward(self, x_t, t, cond):
        return self.conv(x_t) * (1 + t.float().reshape(-1, 1, 1, 1) / 1000) + cond["c"].reshape(-1, 4, 1, 1)


def k_denoiser(model, alphas_cumprod, prediction_type):
    """The model seen as ComfyUI sees it: D(x, sigma) -> x0, as comfy.model_sampling's EPS / V_PREDICTION do."""
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()

    def denoise(x, sigma, cond):
        t = (sigmas[None, :] - sigma[:, None]).abs().argmin(1)  # ComfyUI maps sigma back to t
        x_t = x / (sigma**2 + 1).sqrt().reshape(-1, 1, 1, 1)
        out = model(x_t, t, cond)
        s = sigma.reshape(-1, 1, 1, 1)
        if prediction_type == "epsilon":
            return x - out * s
        return x / (s**2 + 1) - out * s / (s**2 + 1).sqrt()

    return denoise


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_from_denoiser_gives_back_the_models_own_output(prediction_type):
    torch.manual_seed(0)
    model, abar = ToyUNet(), schedule()
    predict = predict_from_denoiser(k_denoiser(model, abar, prediction_type), abar, prediction_type)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    cond = {"c": torch.randn(3, 4)}
    x_t = add_noise(x0, noise, abar, t)
    with torch.no_grad():
        assert torch.allclose(predict(x_t, t, cond), model(x_t, t, cond), atol=2e-5, rtol=1e-4)


def test_paired_losses_match_the_diffusers_backend_draw_for_draw():
    from rgd_core.backends import diffusers_sd

    torch.manual_seed(0)
    model, abar = ToyUNet(), schedule()
    data = PairedData(torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), {"c": torch.randn(5, 4)},
                      {"c": torch.randn(5, 4)})
    predict = predict_from_denoiser(k_denoiser(model, abar, "epsilon"), abar, "epsilon")
    ours = paired_losses(predict, data, abar, "epsilon", batch_size=3)
    components = types.SimpleNamespace(scheduler=types.SimpleNamespace(alphas_cumprod=abar), prediction_type="epsilon")
    original = diffusers_sd._unet_call
    diffusers_sd._unet_call = lambda unet, x, t, cond: unet(x, t, cond)
    try:
        theirs = diffusers_sd.paired_losses(components, data, batch_size=3)
        for mine, reference in zip(ours, theirs):
            a = mine(model, torch.Generator().manual_seed(11))
            b = reference(model, torch.Generator().manual_seed(11))
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    finally:
        diffusers_sd._unet_call = original


def test_alphas_cumprod_from_sigmas_inverts_comfyuis_sigma_table():
    abar = schedule()
    sigmas = ((1 - abar) / abar) ** 0.5
    assert torch.allclose(alphas_cumprod_from_sigmas(sigmas), abar, rtol=1e-6)


def test_make_edit_selects_the_scopes_weights():
    shapes = {
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 6),
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight": (8, 8),
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias": (8,),
        "diffusion_model.input_blocks.1.1.proj_in.weight": (8, 8, 1, 1),
        "diffusion_model.input_blocks.1.0.in_layers.0.weight": (8,),
    }
    lora = make_edit(shapes, "lora", rank=2)
    assert sorted(lora.names) == sorted(k for k in shapes if k.endswith(("to_k.weight", "to_out.0.weight")))
    assert make_edit(shapes, "cross-attn").names == [k for k in shapes if "attn2" in k]
    assert set(make_edit(shapes, "non-cross-attn").names) == {k for k in shapes if "attn2" not in k}
    assert len(make_edit(shapes, "full")) == len(shapes)
    with pytest.raises(RGDInputError, match="scope"):
        in_scope("x.weight", "attention")
    with pytest.raises(RGDInputError, match="selects no weights"):
        make_edit({"diffusion_model.conv.weight": (4, 4, 3, 3)}, "lora")


def test_edits_start_as_the_identity_and_are_seeded():
    weight = torch.randn(8, 6)
    assert torch.equal(LoRADelta((8, 6), 2, generator=torch.Generator().manual_seed(0))(weight), weight)
    assert torch.equal(FullDelta((8, 6))(weight), weight)
    shapes = {"m.attn1.to_q.weight": (8, 6)}
    a, b = make_edit(shapes, "lora", seed=1), make_edit(shapes, "lora", seed=1)
    assert torch.equal(a.items()[0][1].down, b.items()[0][1].down)
    assert not torch.equal(a.items()[0][1].down, make_edit(shapes, "lora", seed=2).items()[0][1].down)


def test_kohya_tensors_names_lora_and_diff_keys_and_skips_untouched_deltas():
    lora = make_edit({"m.attn2.to_k.weight": (8, 6)}, "lora", rank=2, alpha=1.0)
    with torch.no_grad():
        lora.items()[0][1].up.fill_(0.5)
    tensors = kohya_tensors(lora, {"m.attn2.to_k": "lora_unet_x"})
    assert set(tensors) == {"lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight", "lora_unet_x.alpha"}
    assert float(tensors["lora_unet_x.alpha"]) == 1.0
    full = make_edit({"m.attn2.to_k.weight": (8, 6), "m.attn2.to_k.bias": (8,), "m.attn2.to_v.weight": (8, 6)},
                     "cross-attn")
    with torch.no_grad():
        dict(full.items())["m.attn2.to_k.weight"].diff.fill_(1.0)
        dict(full.items())["m.attn2.to_k.bias"].diff.fill_(2.0)
    tensors = kohya_tensors(full, {"m.attn2.to_k": "lora_unet_k", "m.attn2.to_v": "lora_unet_v"},
                            dtype=torch.float16)
    assert set(tensors) == {"lora_unet_k.diff", "lora_unet_k.diff_b"}  # to_v is still zero
    assert tensors["lora_unet_k.diff"].dtype == torch.float16
    with pytest.raises(RGDInputError, match="no kohya name"):
        kohya_tensors(full, {})


def test_lora_delta_is_alpha_over_rank_up_down():
    delta = LoRADelta((4, 3), rank=2, alpha=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta.up.fill_(1.0)
    expected = (delta.up @ delta.down) * 0.5
    assert torch.allclose(delta(torch.zeros(4, 3)), expected)
    assert math.isclose(delta.alpha / delta.rank, 0.5)

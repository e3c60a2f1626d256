"""The node pack without ComfyUI: schemas, input validation, that the nodes hand over to rgd_core, and the in-graph
maths in rgd_core.hosts.denoiser (the same losses as the headless backend).

ComfyUI's V3 API is replaced by a small recording stand-in (``comfy_api.latest`` with ``io`` and ``ui``, plus
``folder_paths`` and ``comfy.samplers`` for the combo lists), installed only for the tests that need it and removed
afterwards. tests/comfyui/ runs the same nodes in a real ComfyUI.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import math
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from rgd_core.edits.scopes import SCOPES, in_scope
from rgd_core.hosts.denoiser import alphas_cumprod_from_sigmas, denoiser_losses, predict_from_denoiser
from rgd_core.edits.deltas import FullDelta, LoRADelta, kohya_tensors, make_edit
from rgd_core.method.paired_data import PairedData
from rgd_core.errors import RGDInputError
from rgd_core.method.losses import add_noise
from rgd_core.prompts import NEIGHBOUR_SHARE, PRESET_NEIGHBOURS, build_prompt_sets, with_neighbours
from rgd_core.method.update_rules import UPDATE_RULES

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
    assert inputs["scope"].options["options"] == list(SCOPES) and inputs["scope"].options["default"] == "lora"
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
    (dict(truncation_m=-1.0), "truncation m"),
    (dict(scope="everything"), "scope must be one of"),
    (dict(method="sgd"), "method must be one of"),
    (dict(steps=0), "steps must be at least 1, not 0"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(lora_rank=0), "lora_rank must be at least 1"),
    (dict(pairs=-1), "pairs must be at least 0"),
    (dict(width=4), "width must be at least 8"),
    (dict(forget_objective="sum"), "forget_objective must be one of auto, one-mean, per-concept"),
])
def test_unlearn_refuses_bad_settings_with_one_line_per_problem(pack, changes, message):
    """What a hand-written API prompt can still send past ComfyUI's own widget checks: one line naming the widget."""
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    with pytest.raises(RGDInputError) as info:
        module.check_settings(**unlearn_widgets(**changes))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unlearn_leaves_widget_ranges_to_comfyui_and_rounds_sizes_like_empty_latent_image(pack):
    """ComfyUI repeats a validate_inputs message under every input the function declares and skips its own range
    check for them; declaring none gives one message per out-of-range widget, from ComfyUI itself."""
    node = pack.NODE_CLASS_MAPPINGS["RGDUnlearn"]
    assert "validate_inputs" not in vars(node)
    widgets = inputs_of(schema(pack, "RGDUnlearn"))
    assert widgets["steps"].options["min"] == 1 and widgets["lr"].options["min"] > 0
    assert widgets["truncation_m"].options["min"] == 0 and widgets["batch_size"].options["min"] == 1
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    assert module.latent_size(500, 512) == (496, 512)
    module.check_settings(**unlearn_widgets())  # the defaults pass


def test_flow_models_left_at_the_sd_stop_target_take_theirs_under_auto_sampling(pack):
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    assert module.family_stop_ratio(5.0, "auto", flow=True) == 7.0
    assert module.family_stop_ratio(5.0, "auto", flow=False) == 5.0
    assert module.family_stop_ratio(5.0, "widgets", flow=True) == 5.0  # the widgets as they are
    assert module.family_stop_ratio(3.0, "auto", flow=True) == 3.0  # a target the user set
    assert module.family_stop_ratio(0.0, "auto", flow=True) == 0.0  # fixed steps


def test_the_truncation_widget_maps_to_skip_ascent_and_zero_turns_it_off(pack):
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    config = module.unlearn_config("rgd", 100, 1.6, 1.1, 1e-5, 3)
    assert (config.truncation, config.truncation_threshold, config.retain_weight, config.seed) == ("skip", 1.1, 1.6, 3)
    assert module.unlearn_config("graddiff", 1, 1.0, 0.0, 1e-5, 0).truncation == "none"


def test_the_forget_objective_widget_reaches_the_config(pack):
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    widget = inputs_of(schema(pack, "RGDUnlearn"))["forget_objective"]
    assert widget.options["default"] == "auto"
    chosen = {name: module.check_settings(**unlearn_widgets(forget_objective=name)).forget_per_concept
              for name in ("auto", "one-mean", "per-concept")}
    assert chosen == {"auto": None, "one-mean": False, "per-concept": True}  # auto: the recipe decides by count


def test_prompt_set_node_returns_what_rgd_core_builds(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDPromptSet"]
    out = node.execute("Van Gogh", "art-style", 20, 5, 7)
    train, test = build_prompt_sets("Van Gogh", preset="art-style", train_count=20, test_count=5, seed=7)
    train = with_neighbours(train, PRESET_NEIGHBOURS["art-style"], NEIGHBOUR_SHARE, 7)  # the preset's own neighbours
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
    # a retain prompt that still names the concept: rgd_core's check, its one-line message on the node
    assert "retain prompt 'a cat' still contains the concept word 'cat'" in message and "\n" not in message


def test_prompt_set_node_reports_rgd_core_errors(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDPromptSet"]
    assert "{concept}" in node.validate_inputs("cat", "custom", 5, 1, 0, custom_template="a photo")
    message = node.validate_inputs("", "nudity", 5, 1, 0)
    assert message.startswith("concept is empty") and "\n" not in message
    assert node.validate_inputs("nudity", "nudity", 5, 1, 0) is True


@pytest.mark.parametrize("prefix", ["../escape", "/abs/path", "rgd/../../x", "C:evil", "", "rgd/", "a//b"])
def test_save_prefix_can_never_leave_the_output_folders(pack, prefix):
    result = pack.NODE_CLASS_MAPPINGS["RGDSave"].validate_inputs(filename_prefix=prefix)
    assert isinstance(result, str) and "filename prefix" in result


def test_save_accepts_sub_folders_and_declares_only_the_prefix(pack):
    node = pack.NODE_CLASS_MAPPINGS["RGDSave"]
    assert node.validate_inputs(filename_prefix="rgd/unlearned") is True
    assert node.validate_inputs(filename_prefix=None) is True  # linked: checked when it runs
    import inspect

    # one declared input: a bad prefix is one message, not one per widget
    assert list(inspect.signature(node.validate_inputs).parameters) == ["filename_prefix"]


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


# --- rgd_core.hosts.denoiser: the in-graph objective is the headless one ----------------------------------------


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
    from rgd_core.hosts import diffusers_sd

    torch.manual_seed(0)
    model, abar = ToyUNet(), schedule()
    data = PairedData(torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), {"c": torch.randn(5, 4)},
                      {"c": torch.randn(5, 4)})
    predict = predict_from_denoiser(k_denoiser(model, abar, "epsilon"), abar, "epsilon")
    ours = denoiser_losses(predict, data, abar, "epsilon", batch_size=3)
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


# --- the in-graph recipe and the Save node against a small fake of ComfyUI's runtime --------------------------------
#
# What nodes/glue.py touches, and no more: a ModelPatcher (clone, add_weight_wrapper, get_model_object, load_device)
# around a BaseModel (model_sampling, latent_format, process_latent_in/out, extra_conds, apply_model) whose layers carry
# comfy.ops' weight_function / bias_function lists; comfy.model_sampling's EPS / V_PREDICTION / ModelSamplingDiscrete;
# comfy.sample.sample; comfy.model_management (load_models_gpu, current_loaded_models, the interrupt flag);
# comfy.utils.ProgressBar; comfy.lora.model_lora_keys_unet; comfy.sd (load_lora_for_models, save_checkpoint); and
# folder_paths' output folders. As in ComfyUI, loading a patcher appends its weight wrappers to the layers of the
# model it shares with every other clone, and unloading takes them off.


class _Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _comfy_runtime_modules(tmp_path):
    import torch.nn.functional as F

    sampling = types.ModuleType("comfy.model_sampling")

    class EPS:
        def calculate_input(self, sigma, noise):
            return noise / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5

        def calculate_denoised(self, sigma, model_output, model_input):
            return model_input - model_output * sigma.reshape(-1, 1, 1, 1)

    class V_PREDICTION(EPS):
        def calculate_denoised(self, sigma, model_output, model_input):
            s = sigma.reshape(-1, 1, 1, 1)
            return model_input / (s**2 + 1) - model_output * s / (s**2 + 1) ** 0.5

    class EDM(V_PREDICTION):
        pass

    class ModelSamplingDiscrete(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("sigmas", ((1 - schedule()) / schedule()).sqrt())

        def timestep(self, sigma):
            return (self.sigmas[None, :] - sigma[:, None]).abs().argmin(1)

    sampling.EPS, sampling.V_PREDICTION, sampling.EDM = EPS, V_PREDICTION, EDM
    sampling.ModelSamplingDiscrete = ModelSamplingDiscrete

    class Layer(nn.Module):
        """A comfy.ops layer: the weight and bias pass through the wrapper functions on every call."""

        def __init__(self, op, weight_shape, out_features, **kwargs):
            super().__init__()
            self.op, self.kwargs = op, kwargs
            self.weight = nn.Parameter(torch.randn(*weight_shape) * 0.3, requires_grad=False)
            self.bias = nn.Parameter(torch.randn(out_features) * 0.1, requires_grad=False)
            self.weight_function, self.bias_function = [], []

        def forward(self, x):
            weight, bias = self.weight, self.bias
            for function in self.weight_function:
                weight = function(weight)
            for function in self.bias_function:
                bias = function(bias)
            return self.op(x, weight, bias, **self.kwargs)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn2 = nn.Module()
            self.attn2.to_k = Layer(F.linear, (8, 6), 8)

    class DiffusionModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_conv = Layer(F.conv2d, (8, 4, 3, 3), 8, padding=1)
            self.block = Block()
            self.out_conv = Layer(F.conv2d, (4, 8, 3, 3), 4, padding=1)

        def forward(self, x, timesteps, context):
            text = self.block.attn2.to_k(context.mean(1))
            h = self.in_conv(x) + text[:, :, None, None] * (1 + timesteps.float() / 1000)[:, None, None, None]
            return self.out_conv(F.silu(h))

    class ModelSampling(ModelSamplingDiscrete, EPS):  # ComfyUI builds this class from the model type
        pass

    ModelType = enum.Enum("ModelType", ["EPS", "V_PREDICTION"])

    class BaseModel(nn.Module):
        latent_format = types.SimpleNamespace(latent_channels=4)
        model_type = ModelType.EPS

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.diffusion_model = DiffusionModel()
            self.model_sampling = ModelSampling()

        def process_latent_in(self, latent):
            return latent * 0.5

        def process_latent_out(self, latent):
            return latent / 0.5

        def extra_conds(self, cross_attn, **kwargs):
            return {"c_crossattn": _Cond(cross_attn)}

        def apply_model(self, x, t, c_crossattn):
            sampling = self.model_sampling
            out = self.diffusion_model(sampling.calculate_input(t, x), sampling.timestep(t), c_crossattn)
            return sampling.calculate_denoised(t, out, x)

    class ModelPatcher:
        load_device = torch.device("cpu")

        def __init__(self, model, wrappers=None, loras=()):
            self.model, self.weight_wrapper_patches, self.loras = model, dict(wrappers or {}), list(loras)

        def clone(self):
            return ModelPatcher(self.model, {k: list(v) for k, v in self.weight_wrapper_patches.items()}, self.loras)

        def add_weight_wrapper(self, name, function):
            self.weight_wrapper_patches.setdefault(name, []).append(function)

        def get_model_object(self, name):
            return getattr(self.model, name)

        def functions(self):
            for key, functions in self.weight_wrapper_patches.items():
                module, kind = key.rsplit(".", 1)
                yield getattr(self.model.get_submodule(module), f"{kind}_function"), functions

    management = types.ModuleType("comfy.model_management")
    management.current_loaded_models = []
    management.InterruptProcessingException = _Interrupted
    management.interrupt_after = None  # stop asking after this many polls
    management.polls = 0
    management.loads = []

    class LoadedModel:
        def __init__(self, patcher):
            self.model = patcher

        def model_unload(self):
            for applied, functions in self.model.functions():
                applied[:] = [f for f in applied if all(f is not g for g in functions)]

    def load_models_gpu(patchers, force_full_load=False):
        for patcher in patchers:
            for applied, functions in patcher.functions():
                applied.extend(functions)
            management.loads.append(sum(len(f) for f in patcher.weight_wrapper_patches.values()))
            management.current_loaded_models.insert(0, LoadedModel(patcher))

    def processing_interrupted():
        management.polls += 1
        return management.interrupt_after is not None and management.polls > management.interrupt_after

    def throw_exception_if_processing_interrupted():
        if management.interrupt_after is not None and management.polls > management.interrupt_after:
            raise _Interrupted()

    management.load_models_gpu = load_models_gpu
    management.processing_interrupted = processing_interrupted
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

    sample = types.ModuleType("comfy.sample")

    def sample_fn(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, seed=None,
                  disable_pbar=False):
        """One guided denoiser call at the top of the schedule: a deterministic function of noise and prompt."""
        base = model.model
        sigma = base.model_sampling.sigmas[-1:].expand(noise.shape[0])
        x = noise * sigma.reshape(-1, 1, 1, 1)
        cond = base.apply_model(x, sigma, c_crossattn=positive[0][0])
        uncond = base.apply_model(x, sigma, c_crossattn=negative[0][0].expand(noise.shape[0], -1, -1))
        return base.process_latent_out(uncond + cfg * (cond - uncond)).tanh()

    sample.sample = sample_fn

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update(self, value):
            self.current += value

        def update_absolute(self, value, total=None, preview=None):
            self.current = value

    utils.ProgressBar = ProgressBar

    lora = types.ModuleType("comfy.lora")

    def model_lora_keys_unet(model, key_map):
        for name, module in model.named_modules():
            if name.startswith("diffusion_model.") and hasattr(module, "weight_function"):
                key_map["lora_unet_" + name[len("diffusion_model."):].replace(".", "_")] = f"{name}.weight"
        return key_map

    lora.model_lora_keys_unet = model_lora_keys_unet

    sd = types.ModuleType("comfy.sd")
    sd.saved = []

    def load_lora_for_models(model, clip, lora_tensors, strength_model, strength_clip):
        return ModelPatcher(model.model, model.weight_wrapper_patches, [*model.loras, lora_tensors]), clip

    def save_checkpoint(path, model, clip, vae, clip_vision, metadata=None, extra_keys=None):
        from safetensors.torch import save_file

        save_file({"model.diffusion_model.in_conv.weight": model.model.diffusion_model.in_conv.weight.contiguous()},
                  path, metadata=metadata)
        sd.saved.append(path)

    sd.load_lora_for_models, sd.save_checkpoint = load_lora_for_models, save_checkpoint

    model_base = types.ModuleType("comfy.model_base")
    model_base.ModelType = ModelType

    class Clip:
        """CLIP: one [tensor (1, 5, 6), extras] CONDITIONING entry per prompt, a function of the prompt's bytes."""

        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            seed = int.from_bytes(tokens.encode()[:6].ljust(6, b"\0"), "little") + len(tokens)
            tensor = torch.randn(1, 5, 6, generator=torch.Generator().manual_seed(seed))
            return [[tensor, {"pooled_output": None}]]

    roots = {"checkpoints": tmp_path / "models" / "checkpoints", "loras": tmp_path / "models" / "loras",
             "diffusion_models": tmp_path / "models" / "diffusion_models"}

    def get_save_image_path(prefix, output_dir, image_width=0, image_height=0):
        """ComfyUI's folder + name + next counter, without its own escape check (the pack's guard is under test)."""
        subfolder, name = os.path.split(prefix)
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        numbers = [int(found.group(1)) for entry in os.listdir(folder)
                   if (found := re.fullmatch(re.escape(name) + r"_(\d+)_\..*", entry))]
        counter = max(numbers, default=0) + 1
        return folder, name, counter, subfolder, prefix

    folders = types.SimpleNamespace(
        get_folder_paths=lambda kind: [str(roots[kind])],
        get_output_directory=lambda: str(tmp_path / "output"),
        get_save_image_path=get_save_image_path,
    )
    conds = types.ModuleType("comfy.conds")
    conds.CONDCrossAttn = _Cond
    modules = {"comfy.model_sampling": sampling, "comfy.model_management": management, "comfy.sample": sample,
               "comfy.utils": utils, "comfy.lora": lora, "comfy.sd": sd, "comfy.model_base": model_base,
               "comfy.conds": conds}
    return modules, folders, ModelPatcher(BaseModel()), Clip()


class _Cond:
    """comfy.conds.CONDCrossAttn, as model_conds uses it."""

    def __init__(self, tensor):
        self.tensor = tensor

    def process_cond(self, batch_size, device, area=None):
        return self

    def can_concat(self, other):
        return self.tensor.shape == other.tensor.shape

    def concat(self, others):
        return torch.cat([self.tensor] + [other.tensor for other in others])


@pytest.fixture
def comfy_runtime(pack, monkeypatch, tmp_path):
    """(node module namespace, fake ComfyUI modules, MODEL, CLIP) with the fakes installed over the pack's."""
    modules, folders, model, clip = _comfy_runtime_modules(tmp_path / "comfyui")
    comfy = sys.modules["comfy"]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(comfy, name.split(".", 1)[1], module, raising=False)
    folder_paths = sys.modules["folder_paths"]
    for name, value in vars(folders).items():
        monkeypatch.setattr(folder_paths, name, value, raising=False)
    nodes = types.SimpleNamespace(**{name: importlib.import_module(f"rgd_pack_under_test.nodes.{name}")
                                     for name in ("glue", "unlearn", "save")})
    return types.SimpleNamespace(nodes=nodes, comfy=types.SimpleNamespace(**{k.split(".")[1]: v
                                                                            for k, v in modules.items()}),
                                 model=model, clip=clip, root=tmp_path / "comfyui")


def _unlearn_node_args(prompt_set, **changes):
    args = dict(method="rgd", scope="full", steps=3, retain_weight=1.0, truncation_m=0.0, lr=1e-2, batch_size=2,
                seed=0, lora_rank=2, pairs=2, sample_steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                width=32, height=32, preview_every=0)
    args.update(changes)
    return args


def _model_state(model):
    """Everything another branch of the graph could see of the shared MODEL."""
    base = model.model
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = base.model_sampling.sigmas[[10, 500]]
    context = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = base.apply_model(x, sigma, c_crossattn=context)
    wrappers = [(name, len(m.weight_function), len(m.bias_function))
                for name, m in base.named_modules() if hasattr(m, "weight_function")]
    return {k: v.clone() for k, v in base.state_dict().items()}, output, wrappers, dict(model.weight_wrapper_patches)


def _assert_untouched(runtime, before):
    weights, output, wrappers, patches = _model_state(runtime.model)
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)  # the input MODEL: bit for bit
    assert torch.equal(output, before[1])  # the same computation on the same weights
    assert wrappers == before[2] and patches == before[3]  # no wrapper left on the shared layers
    assert runtime.comfy.model_management.current_loaded_models == []  # the training clone was unloaded


@pytest.fixture
def small_prompt_set():
    return build_prompt_sets("nudity", train_count=2, test_count=1, seed=0)[0]


def test_unlearn_node_trains_an_edit_beside_the_model(comfy_runtime, small_prompt_set):
    runtime = comfy_runtime
    before = _model_state(runtime.model)
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDUnlearn"]
    out = node.execute(runtime.model, runtime.clip, small_prompt_set, **_unlearn_node_args(small_prompt_set))
    edited, lora, history = out.args
    assert runtime.comfy.model_management.loads == [6]  # the edit's 6 deltas were on the layers while training
    assert set(lora) == {f"lora_unet_{name}.{kind}" for name in ("in_conv", "block_attn2_to_k", "out_conv")
                         for kind in ("diff", "diff_b")}
    assert all(bool(tensor.any()) for tensor in lora.values())
    assert lora.metadata["rgd_seed"] == 0 and lora.metadata["rgd_backend"] == "comfyui"
    assert edited.loras == [lora] and edited is not runtime.model
    assert [r["step"] for r in history["records"]] == [0, 1, 2] and len(history["forget_loss"]) == 3
    _assert_untouched(runtime, before)


def test_unlearn_node_seed_is_a_fixed_widget_and_the_same_seed_gives_the_same_edit(comfy_runtime,
                                                                                    small_prompt_set):
    """Seeds do not randomise after each queue (no control_after_generate widget), so a re-queued graph is the same
    graph; and a fixed seed is a fixed edit (the same computation again, bit for bit)."""
    pack_module = sys.modules["rgd_pack_under_test"]
    for node_id in ("RGDUnlearn", "RGDPromptSet"):
        seed = inputs_of(schema(pack_module, node_id))["seed"]
        assert seed.options["control_after_generate"] is False, node_id
    node = pack_module.NODE_CLASS_MAPPINGS["RGDUnlearn"]
    runtime = comfy_runtime
    run = lambda seed: node.execute(runtime.model, runtime.clip, small_prompt_set,  # noqa: E731
                                    **_unlearn_node_args(small_prompt_set, seed=seed)).args[1]
    first, again, other = run(5), run(5), run(6)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_cancel_in_the_graph_leaves_the_input_model_untouched(comfy_runtime, small_prompt_set):
    runtime = comfy_runtime
    before = _model_state(runtime.model)
    management = runtime.comfy.model_management
    management.interrupt_after = 2  # ComfyUI's Cancel, pressed during the third step's check
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDUnlearn"]
    with pytest.raises(_Interrupted):  # ComfyUI's own interrupt, so the queue shows "interrupted", not an error
        node.execute(runtime.model, runtime.clip, small_prompt_set, **_unlearn_node_args(small_prompt_set, steps=50))
    assert management.polls == 3 and management.loads == [6]  # two steps trained with the edit on, then stopped
    _assert_untouched(runtime, before)


@pytest.mark.parametrize("where", ["training", "sampling"])
def test_an_error_in_the_graph_leaves_the_input_model_untouched(comfy_runtime, small_prompt_set, monkeypatch, where):
    from rgd_core.method.unlearner import Unlearner

    runtime = comfy_runtime
    before = _model_state(runtime.model)
    if where == "training":
        real_step = Unlearner.step

        def failing_step(self, step):
            if step == 1:
                raise RuntimeError("out of memory (simulated)")
            return real_step(self, step)

        monkeypatch.setattr(Unlearner, "step", failing_step)
    else:
        def failing_sample(*args, **kwargs):
            raise RuntimeError("sampler failed (simulated)")

        monkeypatch.setattr(runtime.comfy.sample, "sample", failing_sample)
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDUnlearn"]
    with pytest.raises(RuntimeError, match="simulated"):
        node.execute(runtime.model, runtime.clip, small_prompt_set, **_unlearn_node_args(small_prompt_set))
    assert runtime.comfy.model_management.loads == ([6] if where == "training" else [])
    _assert_untouched(runtime, before)


class PixelVAE:
    """A VAE whose decode spreads each latent's first channel over an 8x bigger image, values in [0, 1]."""

    def __init__(self):
        self.decoded = 0

    def decode(self, latents):
        self.decoded += len(latents)
        image = torch.sigmoid(latents[:, :1]).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        return image.repeat(1, 3, 1, 1).permute(0, 2, 3, 1)  # ComfyUI's (B, H, W, C)


@pytest.mark.parametrize("held_out", [False, True])
def test_unlearn_node_judge_draws_the_probe_and_stops_once_nudenet_sees_no_nudity(comfy_runtime,
                                                                                    small_prompt_set, caplog, held_out):
    """The fake model draws blurry grey squares: NudeNet finds nothing, so the first probe (step 5) ends the run.
    The probe is the training pairs, or the held-out prompts of a connected probe set."""
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDUnlearn"]
    vae = PixelVAE()
    probe_set = build_prompt_sets("nudity", train_count=2, test_count=3, seed=0)[1] if held_out else None
    out = node.execute(runtime.model, runtime.clip, small_prompt_set,
                       **_unlearn_node_args(small_prompt_set, steps=8, vae=vae, judge="nudenet", probe_set=probe_set))
    records = out.args[2]["records"]
    assert len(records) == 5 and records[-1]["judge_shares"] == {"nudity": 0.0}
    assert records[-1]["stop_reason"].startswith("the judge sees the concept in 0.0% of its probe")
    assert "0.0% of the base model's probe already" in caplog.text  # a judge that cannot tell: the user is warned
    probed = 3 if held_out else 2  # the probe set's 3 test prompts, or the prompt set's 2 pairs
    assert vae.decoded == 2 * probed  # the base model's probe, then step 5's


@pytest.mark.parametrize("changes, message", [
    (dict(judge="clip", vae=PixelVAE()), "judge clip needs judge_clip"),
    (dict(judge="nudenet"), "connect the model's VAE"),
    (dict(judge="llava", vae=PixelVAE()), "judge must be one of"),
    (dict(judge="clip", vae=PixelVAE(), judge_clip="/no/such/clip"), "CLIP model not found"),
    (dict(judge="nudenet", vae=PixelVAE(), probe_set=build_prompt_sets("church", "object", 1, 2, seed=0)[1]),
     "probe_set erases church, the prompt set nudity: connect the same Prompt Set node's test output"),
])
def test_unlearn_node_refuses_a_bad_judge_before_sampling(comfy_runtime, small_prompt_set, changes, message,
                                                         monkeypatch):
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDUnlearn"]
    sampled = []
    sample = runtime.comfy.sample.sample
    monkeypatch.setattr(runtime.comfy.sample, "sample", lambda *a, **k: sampled.append(1) or sample(*a, **k))
    with pytest.raises(RGDInputError, match=message):
        node.execute(runtime.model, runtime.clip, small_prompt_set, **_unlearn_node_args(small_prompt_set, **changes))
    assert sampled == [] and runtime.comfy.model_management.loads == []  # nothing was sampled or trained


def test_unlearn_node_judge_nudenet_refuses_several_concepts(pack):
    module = sys.modules["rgd_pack_under_test.nodes.unlearn"]
    with pytest.raises(RGDInputError, match="cannot judge a prompt set of several concepts"):
        module.check_judge("nudenet", "", PixelVAE(), {"nudity", "violence"})


def _all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


VAE = "a VAE"  # the fake saver takes anything


def _edit():
    glue = importlib.import_module("rgd_pack_under_test.nodes.glue")
    return glue.RGDEdit({"lora_unet_x.diff": torch.ones(2, 2)}, {"rgd_method": "rgd"})


@pytest.mark.parametrize("prefix", ["../escape", "/abs/path", "rgd/../../x", "C:evil", "", "a//b"])
def test_save_node_refuses_an_escaping_prefix_at_run_time_and_writes_nothing(comfy_runtime, prefix):
    """validate_inputs is skipped when the prefix is linked from another node; execute itself must refuse it."""
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDSave"]
    with pytest.raises(RGDInputError, match="filename prefix"):
        node.execute(runtime.model, runtime.clip, VAE, prefix, True, True, "fp16", "models", edit=_edit())
    assert _all_files(runtime.root.parent) == []
    assert runtime.comfy.sd.saved == []


@pytest.mark.parametrize("destination", ["models", "output"])
def test_save_node_writes_inside_its_folders_with_the_runs_metadata(comfy_runtime, destination):
    from safetensors import safe_open

    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDSave"]
    info = {"name": "base.safetensors", "sha256": "ab" * 32}
    out = node.execute(runtime.model, runtime.clip, VAE, "rgd/unlearned", True, True, "fp16", destination,
                       edit=_edit(), checkpoint_info=info)
    checkpoint, lora = out.args
    root = runtime.root
    if destination == "models":
        assert checkpoint == str(root / "models" / "checkpoints" / "rgd" / "unlearned_00001_.safetensors")
        assert lora == str(root / "models" / "loras" / "rgd" / "unlearned_lora_00001_.safetensors")
    else:
        assert checkpoint == str(root / "output" / "rgd" / "unlearned_00001_.safetensors")
        assert lora == str(root / "output" / "rgd" / "unlearned_lora_00001_.safetensors")
    assert _all_files(root.parent) == sorted(str(Path(p).relative_to(root.parent)) for p in (checkpoint, lora))
    for path in (checkpoint, lora):
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata()
        assert metadata["rgd_method"] == "rgd" and metadata["base_sha256"] == "ab" * 32 and metadata["rgd_version"]
        assert metadata["base_name"] == "base.safetensors"
    with safe_open(checkpoint, "pt") as handle:
        assert handle.metadata()["modelspec.predict_key"] == "epsilon"  # as ComfyUI's CheckpointSave writes it
    with safe_open(lora, "pt") as handle:
        assert handle.get_tensor("lora_unet_x.diff").dtype == torch.float16
    assert out.ui.text == "saved: unlearned_00001_.safetensors, unlearned_lora_00001_.safetensors"
    again = node.execute(runtime.model, runtime.clip, VAE, "rgd/unlearned", True, False, "fp16", destination)
    assert again.args[0].endswith("unlearned_00002_.safetensors")  # ComfyUI's counter: nothing is overwritten


def test_save_node_without_an_edit_for_the_lora_writes_nothing(comfy_runtime):
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDSave"]
    with pytest.raises(RGDInputError, match="no edit is connected"):
        node.execute(runtime.model, runtime.clip, VAE, "rgd/x", True, True, "fp16", "models")
    assert _all_files(runtime.root.parent) == []


def test_save_node_with_both_switches_off_writes_nothing_and_says_so(comfy_runtime):
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDSave"]
    out = node.execute(runtime.model, runtime.clip, VAE, "rgd/x", False, False, "fp16", "models", edit=_edit())
    assert out.args == ("", "") and "nothing saved" in out.ui.text
    assert _all_files(runtime.root.parent) == []


def test_save_node_without_clip_and_vae_writes_the_diffusion_model_where_load_diffusion_model_lists_it(
        comfy_runtime):
    """Flux and SD3.5 are loaded with "Load Diffusion Model" and separate text encoders and VAE: their cleaned
    model is saved alone, to models/diffusion_models; one of CLIP/VAE without the other is refused, no file."""
    runtime = comfy_runtime
    node = sys.modules["rgd_pack_under_test"].NODE_CLASS_MAPPINGS["RGDSave"]
    for clip, vae in ((runtime.clip, None), (None, VAE)):
        with pytest.raises(RGDInputError, match="both clip and vae"):
            node.execute(runtime.model, clip, vae, "rgd/x", True, False, "fp16", "models")
    assert _all_files(runtime.root.parent) == []
    out = node.execute(runtime.model, None, None, "rgd/flux", True, False, "fp16", "models")
    assert out.args[0] == str(runtime.root / "models" / "diffusion_models" / "rgd" / "flux_00001_.safetensors")
    assert _all_files(runtime.root.parent) == ["comfyui/models/diffusion_models/rgd/flux_00001_.safetensors"]

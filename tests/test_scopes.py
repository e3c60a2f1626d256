"""The one scope vocabulary (rgd_core.edits.scopes) selects exactly what each of the three checks it replaced
selected, on SD1, SD2 and SDXL key lists in both layouts (diffusers names for the headless host, original/ComfyUI
names for the in-graph host). The three old checks are kept here, verbatim in behaviour, as the reference."""

import pytest

from rgd_core.edits.scopes import FULL_RANK_SCOPES, SCOPES, in_scope, is_lora_target, scope_filter
from rgd_core.errors import RGDInputError


# --- the three checks as they were before the vocabulary was unified ---------------------------------------------

def old_diffusers_scope_filter(scope):  # backends/diffusers_sd.scope_filter: a substring test on "attn2"
    return {"full": lambda n: True, "cross-attn": lambda n: "attn2" in n,
            "non-cross-attn": lambda n: "attn2" not in n}[scope]


def old_lora_is_target(name):  # lora._is_target: which diffusers Linear layers add_lora wrapped
    parts = name.split(".")
    if not any(block in parts for block in ("attn1", "attn2")):
        return False
    return any(name.endswith("." + target) for target in ("to_q", "to_k", "to_v", "to_out.0"))


def old_denoiser_in_scope(name, scope):  # backends/denoiser.in_scope, on ComfyUI's ldm-layout names
    parts = name.split(".")
    if scope == "lora":
        module = ".".join(parts[:-1])
        return parts[-1] == "weight" and any(module.endswith(f"{block}.{target}") for block in ("attn1", "attn2")
                                             for target in ("to_q", "to_k", "to_v", "to_out.0"))
    if scope == "cross-attn":
        return "attn2" in parts
    if scope == "non-cross-attn":
        return "attn2" not in parts
    return True


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def key_lists(request):
    import sd_fixtures
    import torch

    components = sd_fixtures.build_components(request.param)
    diffusers_names = [name for name, _ in components["unet"].named_parameters()]
    linear_modules = [name for name, module in components["unet"].named_modules()
                      if isinstance(module, torch.nn.Linear)]
    original = sd_fixtures.original_state_dict(request.param, components)
    ldm_names = ["diffusion_model." + key[len("model.diffusion_model."):] for key in original
                 if key.startswith("model.diffusion_model.")]
    return diffusers_names, linear_modules, ldm_names


def test_full_rank_scopes_select_what_the_diffusers_check_selected(key_lists):
    diffusers_names, _, ldm_names = key_lists
    for scope in FULL_RANK_SCOPES:
        for name in diffusers_names:
            assert scope_filter(scope)(name, None) == old_diffusers_scope_filter(scope)(name), (scope, name)
    # non-trivial on every family: some names in, some out
    assert 0 < sum(scope_filter("cross-attn")(n) for n in diffusers_names) < len(diffusers_names)


def test_lora_scope_selects_what_add_lora_wrapped(key_lists):
    diffusers_names, linear_modules, _ = key_lists
    for module in linear_modules:
        assert is_lora_target(module) == old_lora_is_target(module), module
        assert in_scope(module + ".weight", "lora") == old_lora_is_target(module), module
    assert sum(map(is_lora_target, linear_modules)) > 0


def test_every_scope_selects_what_the_in_graph_check_selected(key_lists):
    _, _, ldm_names = key_lists
    for scope in SCOPES:
        selected = [n for n in ldm_names if in_scope(n, scope)]
        assert selected == [n for n in ldm_names if old_denoiser_in_scope(n, scope)], scope
    assert [n for n in ldm_names if in_scope(n, "lora")]


def test_unknown_scope_is_one_line():
    with pytest.raises(RGDInputError, match="scope must be one of lora, cross-attn"):
        in_scope("x.weight", "attention")
    with pytest.raises(RGDInputError, match="full, cross-attn, non-cross-attn"):
        scope_filter("lora")  # LoRA trains added layers, not a subset of the model's own weights

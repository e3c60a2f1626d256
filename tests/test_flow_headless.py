"""Headless RGD on Flux.1 and SD3.x files: tiny models in the layouts ComfyUI and Forge users hold
(``flow_checkpoints``), read with configs from their shapes, conditioned as ComfyUI conditions them, trained, and
written back in the original layout with a LoRA of original kohya names."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flow_checkpoints import (
    CLIP_G_HIDDEN,
    CLIP_L_HIDDEN,
    flux_state_dict,
    sd3_all_in_one_state_dict,
    write_comfyui_layout,
    write_t5_tokenizer,
)
from rgd_core import cli
from rgd_core.checkpoints.flow_load import T5_TOKENS, convert_flux_original, load_flow_components
from rgd_core.errors import RGDInputError
from rgd_core.hosts import diffusers_sd, flow_transformers
from rgd_core.hosts.text_encoding import tokenize
from rgd_core.method.unlearner import UnlearnConfig
from sd_fixtures import one_line_error

pytestmark = pytest.mark.usefixtures("single_thread_torch")

FAMILIES = ("flux-dev", "flux-schnell", "sd3", "sd3.5")
PROMPTS = ["a photo of a cat", "a cat in a garden, oil painting", "a striped cat", "a cat on a table"]
RETAIN = ["a photo of a", "a in a garden, oil painting", "a striped", "a on a table"]
SMALL = diffusers_sd.SamplerSettings(steps=2, guidance_scale=1.0, scheduler="euler", height=32, width=32,
                                     batch_size=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ComfyUI models folder holding every family (one set of text encoders, as for real users)."""
    root = tmp_path_factory.mktemp("models")
    return root, {family: write_comfyui_layout(root, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(models):
    root, paths = models
    return {family: load_flow_components(paths[family]["transformer"], [root / "text_encoders"])
            for family in FAMILIES}


def test_own_flux_converter_equals_diffusers_at_the_released_width():
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    # diffusers' converter fixes the width at 3072; at that width ours must agree on every tensor. Each row carries
    # its own value (stride 0 along the rest), so the real-size model costs no memory and a misplaced row shows.
    tiny = flux_state_dict(depth=2, single=2, hidden=384)
    state = {}
    for i, (key, value) in enumerate(tiny.items()):
        shape = tuple(n * 8 if n % 384 == 0 else n for n in value.shape)
        rows = torch.arange(shape[0], dtype=torch.float64) + i * 100_000
        state[key] = rows.reshape(-1, *[1] * (len(shape) - 1)).expand(shape)
    ours, theirs = convert_flux_original(dict(state)), convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_from_its_files(models, loaded, family):
    paths = models[1][family]
    components = loaded[family]
    original = load_file(str(paths["transformer"]))
    weights = components.transformer.state_dict()
    assert components.variant == ("sd3" if family.startswith("sd3") else family)
    assert components.prediction_type == "flow" and components.vae is None
    if family.startswith("flux"):
        hidden = original["img_in.weight"].shape[0]
        qkv = original["double_blocks.0.img_attn.qkv.weight"]
        assert torch.equal(weights["transformer_blocks.0.attn.to_k.weight"], qkv[hidden : 2 * hidden])
        shift, scale = original["final_layer.adaLN_modulation.1.weight"].chunk(2)
        assert torch.equal(weights["norm_out.linear.weight"], torch.cat([scale, shift]))
        assert components.transformer.config.guidance_embeds == (family == "flux-dev")
        t5, t5_tokenizer = components.text_encoder_2, components.tokenizer_2
    else:
        qkv = original["joint_blocks.1.context_block.attn.qkv.weight"]
        assert torch.equal(weights["transformer_blocks.1.attn.add_v_proj.weight"], qkv[-qkv.shape[0] // 3 :])
        assert (components.transformer.config.qk_norm == "rms_norm") == (family == "sd3.5")
        t5, t5_tokenizer = components.text_encoder_3, components.tokenizer_3
        clip_g = load_file(str(paths["clip_g"]))
        assert torch.equal(components.text_encoder_2.text_projection.weight, clip_g["text_projection.weight"])
    t5_file = load_file(str(paths["t5"]))
    assert torch.equal(t5.state_dict()["encoder.block.1.layer.1.DenseReluDense.wo.weight"],
                       t5_file["encoder.block.1.layer.1.DenseReluDense.wo.weight"])
    ids = tokenize(t5_tokenizer, ["a cat"])
    assert ids.shape == (1, T5_TOKENS[components.family]) and ids[0, 2:].tolist().count(1) == 1  # one </s>, pads


def test_sd3_all_in_one_file_brings_its_own_text_encoders(tmp_path, loaded):
    path = tmp_path / "sd3_medium_incl_clips.safetensors"
    save_file(sd3_all_in_one_state_dict("sd3"), str(path))
    write_t5_tokenizer(tmp_path / "t5_tokenizer")  # beside the file, where the loader looks
    components = load_flow_components(path)
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        expected = getattr(loaded["sd3"], name).state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in getattr(components, name).state_dict().items())


def test_flux_conditioning_and_latents_are_diffusers_pipelines(loaded):
    from diffusers import FluxPipeline

    components = loaded["flux-dev"]
    cond = diffusers_sd.encode_prompts(components, PROMPTS[:2])
    pipe = FluxPipeline(scheduler=components.scheduler, vae=None, text_encoder=components.text_encoder,
                        tokenizer=components.tokenizer, text_encoder_2=components.text_encoder_2,
                        tokenizer_2=components.tokenizer_2, transformer=components.transformer)
    hidden, pooled, _ = pipe.encode_prompt(PROMPTS[:2], PROMPTS[:2], max_sequence_length=T5_TOKENS["flux"])
    assert torch.allclose(cond["encoder_hidden_states"], hidden, atol=1e-6)
    assert torch.allclose(cond["pooled_projections"], pooled, atol=1e-6)
    assert cond["guidance"].tolist() == [3.5, 3.5]  # dev's distilled guidance, as ComfyUI samples it

    latents = torch.randn(2, 16, 8, 6)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 6)
    assert torch.equal(flow_transformers.pack(latents), packed)
    assert torch.equal(flow_transformers.unpack(packed, 8, 6), latents)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32).reshape(-1, 3)
    if ids.shape[0] != 4 * 3:  # diffusers < 0.32 takes the latent's own size and halves it
        ids = FluxPipeline._prepare_latent_image_ids(2, 8, 6, "cpu", torch.float32).reshape(-1, 3)
    assert torch.equal(flow_transformers.image_ids(8, 6), ids)


def test_sd3_conditioning_is_comfyuis(loaded):
    components = loaded["sd3"]
    cond = diffusers_sd.encode_prompts(components, PROMPTS[:2])

    def ids(tokenizer):
        return tokenizer(PROMPTS[:2], padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    clip_l = components.text_encoder(ids(components.tokenizer), output_hidden_states=True)
    clip_g = components.text_encoder_2(ids(components.tokenizer_2), output_hidden_states=True)
    t5 = components.text_encoder_3(ids(components.tokenizer_3)).last_hidden_state
    hidden = cond["encoder_hidden_states"]
    width = CLIP_L_HIDDEN + CLIP_G_HIDDEN
    assert hidden.shape == (2, 77 + 77, t5.shape[-1])
    assert torch.equal(hidden[:, :77, :CLIP_L_HIDDEN], clip_l.hidden_states[-2])  # penultimate, not normed
    assert torch.equal(hidden[:, :77, CLIP_L_HIDDEN:width], clip_g.hidden_states[-2])
    assert not hidden[:, :77, width:].any() and torch.equal(hidden[:, 77:], t5)
    # pooled: CLIP-L's unprojected output (ComfyUI's return_projected_pooled=False), CLIP-G's projected one
    assert torch.equal(cond["pooled_projections"], torch.cat([clip_l.pooler_output, clip_g.text_embeds], -1))
    # the pad tokens differ per encoder, as in SD3's tokenizers: CLIP-L pads with end-of-text, CLIP-G with "!"
    assert ids(components.tokenizer)[0, -1] == 49407 and ids(components.tokenizer_2)[0, -1] == 0


@pytest.mark.parametrize("family, scope", [("flux-dev", "lora"), ("sd3.5", "full")])
def test_training_changes_a_copy_in_scope(loaded, family, scope):
    components = loaded[family]
    before = {key: value.clone() for key, value in components.transformer.state_dict().items()}
    config = UnlearnConfig(method="rgd", steps=2, lr=1e-2, seed=0)
    settings = SMALL if family.startswith("flux") else SMALL.__class__(**{**SMALL.__dict__, "guidance_scale": 4.5})
    edited, records = diffusers_sd.unlearn_sd(components, PROMPTS, RETAIN, config=config, scope=scope, batch_size=2,
                                              sampler=settings)
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["forget_loss"])) for r in records)
    assert all(torch.equal(value, before[key]) for key, value in components.transformer.state_dict().items())
    if scope == "lora":
        from rgd_core.edits.lora import lora_modules

        names = set(lora_modules(edited))
        # every attention projection of both block kinds, and nothing else
        assert "transformer_blocks.0.attn.add_k_proj" in names and "single_transformer_blocks.0.proj_mlp" in names
        assert not any(".ff." in name or ".norm" in name for name in names)
    else:
        changed = [k for k, v in edited.state_dict().items() if not torch.equal(v, before[k])]
        assert any("attn2" in key for key in changed) and any(".ff." in key for key in changed)


def flow_args(paths, models_root, out, *extra):
    return ["unlearn", "--checkpoint", str(paths["transformer"]), "--text-encoders", str(models_root / "text_encoders"),
            "--concept", "cat", "--out", str(out), "--steps", "2", "--train-prompts", "4", "--batch-size", "2",
            "--sample-steps", "2", "--width", "32", "--height", "32", "--lr", "1e-2", "--json", *extra]


def apply_kohya(weight: torch.Tensor, lora: dict, name: str) -> torch.Tensor:
    down, up, alpha = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"], lora[f"{name}.alpha"]
    return weight + float(alpha) / down.shape[0] * (up @ down)


def test_cli_flux_lora_run_writes_original_layout_model_and_lora(models, tmp_path, capsys):
    root, paths = models
    cli.main(flow_args(paths["flux-dev"], root, tmp_path / "out", "--scope", "lora"))
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["family"] == "flux-dev"
    assert (report["settings"]["sampler"], report["settings"]["guidance"]) == ("euler", 1.0)  # Flux's, not SD's
    assert report["settings"]["stop_ratio"] == 7.0  # the flow models' stop target, not SD's 5
    base, edited = load_file(str(paths["flux-dev"]["transformer"])), load_file(report["output"])
    lora = load_file(report["lora"])
    assert edited.keys() == base.keys()  # BFL's own layout, bare keys: Load Diffusion Model reads it
    names = {key.rsplit(".", 2)[0] for key in lora}
    assert names == {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj",
                     "lora_unet_double_blocks_0_txt_attn_qkv", "lora_unet_double_blocks_0_txt_attn_proj",
                     "lora_unet_single_blocks_0_linear1", "lora_unet_single_blocks_0_linear2"}
    kohya = {"lora_unet_" + key.removesuffix(".weight").replace(".", "_"): key for key in base}
    changed = set()
    for name in names:
        key = kohya[name]
        # the saved model is the base plus the saved LoRA (fused qkv from diffusers' separate q, k, v), exactly
        assert torch.allclose(apply_kohya(base[key], lora, name), edited[key], atol=1e-6), key
        changed.add(key)
    assert any(not torch.equal(base[key], edited[key]) for key in changed)
    assert all(torch.equal(base[key], edited[key]) for key in base if key not in changed)


def test_cli_sd3_cross_attn_run_reloads_and_writes_a_difference_file(models, loaded, tmp_path, capsys):
    root, paths = models
    cli.main(flow_args(paths["sd3.5"], root, tmp_path / "out", "--scope", "cross-attn", "--guidance", "3"))
    report = json.loads(capsys.readouterr().out)
    base, edited, diff = (load_file(str(paths["sd3.5"]["transformer"])), load_file(report["output"]),
                          load_file(report["diff"]))
    changed = {key for key in base if not torch.equal(base[key], edited[key])}
    assert changed == set(diff) and changed
    assert all(".attn." in key and "attn2" not in key for key in changed)  # joint attention only
    for key in changed:
        assert torch.allclose(base[key] + diff[key], edited[key], atol=1e-6)
    again = load_flow_components(report["output"], [root / "text_encoders"])
    assert not torch.equal(again.transformer.state_dict()["transformer_blocks.0.attn.to_q.weight"],
                           loaded["sd3.5"].transformer.state_dict()["transformer_blocks.0.attn.to_q.weight"])


@pytest.mark.parametrize("extra, words", [
    (["--sampler", "dpm++2m"], "sample with euler"),
    (["--format", "diffusers"], "single files"),
    (["--width", "40"], "multiples of 16"),
    (["--family", "sdxl"], "drop --family"),
    (["--judge", "nudenet"], "--judge looks at decoded images"),
])
def test_cli_refuses_what_flow_runs_cannot_do(models, tmp_path, capsys, extra, words):
    root, paths = models
    with pytest.raises(SystemExit):
        cli.main(flow_args(paths["flux-schnell"], root, tmp_path / "out", *extra))
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_or_ambiguous_text_encoders_are_named(models, tmp_path):
    _, paths = models
    sd3 = paths["sd3"]["transformer"]
    assert "no CLIP-G text encoder" in one_line_error(load_flow_components, sd3, [paths["sd3"]["clip_l"]])
    no_tokenizer = tmp_path / "encoders"
    no_tokenizer.mkdir()
    for role in ("clip_l", "t5"):
        (no_tokenizer / paths["flux-dev"][role].name).write_bytes(paths["flux-dev"][role].read_bytes())
    error = one_line_error(load_flow_components, paths["flux-dev"]["transformer"], [no_tokenizer])
    assert "no T5 tokenizer" in error and "t5_tokenizer" in error
    (no_tokenizer / "t5xxl_copy.safetensors").write_bytes(paths["flux-dev"]["t5"].read_bytes())
    assert "several T5-XXL files" in one_line_error(load_flow_components, paths["flux-dev"]["transformer"],
                                                    [no_tokenizer])


def test_sd_checkpoints_refuse_text_encoders(sd1_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
                  "--concept", "cat", "--out", str(tmp_path / "out"), "--text-encoders", str(tmp_path)])
    assert "--text-encoders is for Flux.1 and SD3.x" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["flux-schnell", "sd3"])
def test_diffusers_named_lora_adds_up_to_the_written_model(models, tmp_path, capsys, family):
    root, paths = models
    cli.main(flow_args(paths[family], root, tmp_path / "out", "--scope", "lora", "--lora-format", "diffusers"))
    report = json.loads(capsys.readouterr().out)
    lora = load_file(report["lora"])
    base = load_flow_components(paths[family]["transformer"], [root / "text_encoders"]).transformer.state_dict()
    edited = load_flow_components(report["output"], [root / "text_encoders"]).transformer.state_dict()
    assert lora and all(key.startswith("transformer.") and key.endswith((".lora_A.weight", ".lora_B.weight"))
                        for key in lora)
    # diffusers' names of the transformer's own modules (what load_lora_weights targets), scale folded in: B @ A
    merged = {key: value.clone() for key, value in base.items()}
    for key, down in lora.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            merged[module + ".weight"] += lora[key.replace("lora_A", "lora_B")] @ down
    assert all(torch.allclose(merged[key], edited[key], atol=1e-6) for key in edited)
    assert any(not torch.equal(base[key], edited[key]) for key in edited)


def test_diffusers_lora_names_are_refused_for_sd_checkpoints(sd1_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
                  "--concept", "cat", "--out", str(tmp_path / "out"), "--scope", "lora", "--lora-format", "diffusers"])
    assert "is for Flux.1 and SD3.x files" in capsys.readouterr().err

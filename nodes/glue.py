"""Everything that touches ComfyUI's internals, in one place: a ComfyUI release that moves things breaks here only.

The maths (losses, weight edits, kohya naming of an edit) is in ``rgd_core.hosts.denoiser``; this module only
asks ComfyUI for what that code needs: text conditioning from a CLIP, latents sampled by the loaded model, the
model's denoiser, its noise schedule and parameterisation, weight wrappers, patches and the checkpoint writer.
ComfyUI modules are imported inside the functions, so the node pack imports (and its schemas can be tested)
without ComfyUI.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rgd_core.hosts.denoiser import alphas_cumprod_from_sigmas, predict_from_denoiser
from rgd_core.edits.deltas import EditSet, kohya_tensors, make_edit
from rgd_core.errors import RGDInputError, UnlearningCancelled
from rgd_core.evaluate.judges import JudgeProbe, image_judge
from rgd_core.hosts.base import RecipeSettings, Trainee, add_phases, run_unlearning
from rgd_core.method.losses import FLOW
from rgd_core.method.paired_data import PairedData, prompt_seed, rows_mask, scatter_rows
from rgd_core.method.unlearner import UnlearnConfig

COMFY_UNET_PREFIX = "diffusion_model."


@dataclass(frozen=True)
class SamplerSettings:
    """How the loaded model makes its own forget/retain data (ComfyUI's sampler and scheduler names)."""

    steps: int = 30
    cfg: float = 7.5
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    batch_size: int = 4


# How flow models sample (ComfyUI model config class -> steps, cfg): SD3/3.5 use CFG; Flux dev is guidance-distilled
# (cfg 1, its guidance input 3.5 from the conditioning, ComfyUI's default) and schnell is distilled to 4 steps. The
# "simple" scheduler spaces steps evenly in the model's shifted time ("normal" wastes the last step near sigma_min).
FLOW_SAMPLING = {"SD3": (28, 4.5), "Flux": (20, 1.0), "FluxSchnell": (4, 1.0)}
OTHER_FLOW_SAMPLING = (20, 4.0)


def family_sampler_settings(model, settings: SamplerSettings) -> SamplerSettings:
    """``settings`` for an epsilon/v model (the widgets); a flow model's family's own steps, cfg, euler and simple
    (its size and batch kept), since SD's cfg 7.5 and "normal" scheduler are wrong for SD3 and Flux."""
    from dataclasses import replace

    if prediction_type(model) != FLOW:
        return settings
    steps, cfg = FLOW_SAMPLING.get(type(model.model.model_config).__name__, OTHER_FLOW_SAMPLING)
    return replace(settings, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple")


class RGDEdit(dict):
    """A LORA_MODEL (kohya-named tensors; ComfyUI's LoraModelLoader and this pack's Save take it) that also carries
    the run's safetensors metadata for the Save node."""

    def __init__(self, tensors, metadata=None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})


# --- what the model is -----------------------------------------------------------------------------------------


def prediction_type(model) -> str:
    """'epsilon', 'v_prediction' or 'flow', read from the model's sampling object (what ComfyUI's samplers use), so
    a ModelSamplingDiscrete node that switches an SD2-768 or v-pred SDXL checkpoint to v_prediction, or a
    ModelSamplingSD3/Flux/AuraFlow node that changes a flow model's shift, is honoured. Flow means ComfyUI's CONST
    parameterisation on a discrete flow schedule (SD3.x, Flux.1 dev and schnell, Chroma, AuraFlow, Lumina 2, ...);
    other parameterisations (x0, LCM, EDM, Cosmos' rectified flow) are refused."""
    import comfy.model_sampling as sampling_types

    sampling = model.get_model_object("model_sampling")
    denoise = type(sampling).calculate_denoised
    if isinstance(sampling, sampling_types.ModelSamplingDiscrete) and not isinstance(sampling, sampling_types.EDM):
        if isinstance(sampling, sampling_types.V_PREDICTION) and denoise is sampling_types.V_PREDICTION.calculate_denoised:
            return "v_prediction"
        if isinstance(sampling, sampling_types.EPS) and denoise is sampling_types.EPS.calculate_denoised:
            return "epsilon"
    flow_schedules = (sampling_types.ModelSamplingDiscreteFlow, sampling_types.ModelSamplingFlux)
    if isinstance(sampling, flow_schedules) and isinstance(sampling, sampling_types.CONST) \
            and denoise is sampling_types.CONST.calculate_denoised:
        return FLOW
    raise RGDInputError(
        f"this model samples as {type(sampling).__name__} ({model.model.model_type.name}); RGD here trains discrete "
        "epsilon- and v-prediction models (SD1.x, SD2.x, SDXL) and flow-matching models (SD3.x, Flux.1)."
    )


def noise_schedule(model) -> Tensor:
    """The model's training noise levels as ``losses.denoising_error`` takes them: abar_t behind the discrete sigma
    table of an epsilon/v model; a flow model's own (shifted) sigma table, as it samples with it."""
    sigmas = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
    return sigmas.clone() if prediction_type(model) == FLOW else alphas_cumprod_from_sigmas(sigmas)


# --- data: text conditioning and the model's own samples ---------------------------------------------------------


def encode(clip, prompts: Sequence[str]) -> list[list]:
    """One CONDITIONING entry [tensor, extras] per prompt, as CLIPTextEncode makes it."""
    out = []
    for prompt in prompts:
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        out.append(conditioning[0])
    return out


def _stack(entries: list[list]) -> list[list]:
    """One CONDITIONING entry holding a batch of prompts (same token length), pooled outputs stacked alike."""
    tensor = torch.cat([entry[0] for entry in entries])
    extras = dict(entries[0][1])
    if extras.get("pooled_output") is not None:
        extras["pooled_output"] = torch.cat([entry[1]["pooled_output"] for entry in entries])
    return [[tensor, extras]]


def _groups(entries: list[list], batch_size: int) -> list[range]:
    """Runs of consecutive prompts with the same conditioning shape, at most ``batch_size`` long."""
    groups, start = [], 0
    for i in range(1, len(entries) + 1):
        if i == len(entries) or i - start == batch_size or entries[i][0].shape != entries[start][0].shape:
            groups.append(range(start, i))
            start = i
    return groups


def latent_shape(model, settings: SamplerSettings) -> tuple[int, int, int]:
    if settings.width % 8 or settings.height % 8:
        raise RGDInputError(f"width and height must be multiples of 8, got {settings.width}x{settings.height}.")
    channels = model.model.latent_format.latent_channels
    return channels, settings.height // 8, settings.width // 8


def sample_latents(model, entries: list[list], negative: list, seed: int, settings: SamplerSettings,
                   on_prompt: Callable[[], None] = lambda: None, seed_indices: Sequence[int] | None = None) -> Tensor:
    """x0 latents (as the model sees them) that the model itself samples for each prompt, with CFG against
    ``negative`` (the empty prompt's entry). Prompt i starts from noise seeded by ``prompt_seed(seed, i)`` (as the
    headless backend), so any subset or batching gives the same latents; ``seed_indices[i]`` replaces i when the
    entries are rows of a longer list."""
    import comfy.sample

    shape = latent_shape(model, settings)
    out = []
    for group in _groups(entries, settings.batch_size):
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
            prompt_seed(seed, i if seed_indices is None else seed_indices[i]))) for i in group])
        empty = torch.zeros_like(noise)
        samples = comfy.sample.sample(
            model, noise, settings.steps, settings.cfg, settings.sampler_name, settings.scheduler,
            _stack([entries[i] for i in group]), [negative], empty, seed=seed, disable_pbar=True,
        )
        out.append(model.model.process_latent_in(samples.float().cpu()))
        for _ in group:
            on_prompt()
    return torch.cat(out)


def decoded_images(model, vae, latents: Tensor) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images of x0 latents as ``sample_latents`` returns them."""
    with torch.no_grad():
        images = vae.decode(model.model.process_latent_out(latents))
    images = images.reshape(-1, *images.shape[-3:])  # video VAEs add a frame axis
    return images.clamp(0, 1).mul(255).round().byte().cpu().numpy()


def preview_image(model, vae, entries: list[list], negative: list, seed: int, settings: SamplerSettings):
    """One image per entry from ``model`` as it is now (edit included), all from the same starting noise, side by
    side in one PIL image: the forget prompt's and the retain prompt's sample during training."""
    from PIL import Image

    with torch.no_grad():
        latents = torch.cat([sample_latents(model, [entry], negative, seed, settings) for entry in entries])
    return Image.fromarray(np.concatenate(list(decoded_images(model, vae, latents)), axis=1))


def model_conds(model, entries: list[list], shape: tuple[int, int, int]) -> dict[str, Tensor]:
    """The denoiser's keyword inputs (c_crossattn, SDXL's y, ...) for each prompt, stacked on the batch axis, as
    ComfyUI's samplers build them (``extra_conds``), so any model family ComfyUI loads is conditioned right."""
    per_prompt = []
    noise = torch.zeros(1, *shape)
    for tensor, extras in entries:
        params = dict(extras)
        params.update(cross_attn=tensor, device=torch.device("cpu"), noise=noise, prompt_type="positive")
        params.setdefault("width", shape[2] * 8)
        params.setdefault("height", shape[1] * 8)
        conds = model.model.extra_conds(**params)
        per_prompt.append({key: cond.process_cond(batch_size=1, device=noise.device, area=None)
                           for key, cond in conds.items()})
    import comfy.conds

    stacked = {}
    for key in per_prompt[0]:
        first = per_prompt[0][key]
        # SD3's and Flux's text states are CONDRegular: prompts of other token lengths (over 77 T5 tokens for SD3,
        # 256 for Flux) cannot be stacked, and a CONDConstant that differs would silently keep the first's value
        mismatch = [index for index, conds in enumerate(per_prompt[1:], 2) if not first.can_concat(conds[key])]
        if mismatch and not isinstance(first, comfy.conds.CONDCrossAttn):
            raise RGDInputError(
                f"prompt {mismatch[0]} gives another {key!r} conditioning than prompt 1 (a longer prompt?); this "
                "model's conditioning cannot be batched across token lengths: shorten the longest prompts.")
        # CONDCrossAttn.concat repeats shorter token runs to a common length, as ComfyUI does when batching
        stacked[key] = per_prompt[0][key].concat([conds[key] for conds in per_prompt[1:]]).float().cpu()
    return stacked


def build_data(model, clip, forget: Sequence[str], retain: Sequence[str], seed: int, settings: SamplerSettings,
               on_prompt: Callable[[], None] = lambda: None, rows: Sequence[int] | None = None) -> PairedData:
    """D_f and D_r made by the loaded model, with their conditioning, as ordinary (non-inference) CPU tensors;
    with ``rows``, only those pairs (the ones training draws), the others left zero and marked unsampled."""
    shape = latent_shape(model, settings)
    negative = encode(clip, [""])[0]
    # both sides' conditioning first: prompts that cannot be batched are refused before minutes of sampling
    entries = [encode(clip, list(prompts) if rows is None else [prompts[i] for i in rows])
               for prompts in (forget, retain)]
    conds = [model_conds(model, side, shape) for side in entries]
    sides = []
    for prompts, side, cond in zip((forget, retain), entries, conds):
        with torch.no_grad():
            latents = sample_latents(model, side, negative, seed, settings, on_prompt, seed_indices=rows)
        sides.append((scatter_rows(latents, rows, len(prompts)),
                      {k: scatter_rows(v, rows, len(prompts)) for k, v in cond.items()}))
    with torch.inference_mode(False):
        # ComfyUI runs a prompt under inference_mode; autograd cannot save inference tensors for backward
        (fl, fc), (rl, rc) = [(latents.clone(), {k: v.clone() for k, v in cond.items()}) for latents, cond in sides]
    return PairedData(fl, rl, fc, rc, sampled=rows_mask(rows, len(forget)))


# --- training on the loaded model -----------------------------------------------------------------------------


def _copy_through(weight: Tensor) -> Tensor:
    # A weight function makes ComfyUI hand the layer a fresh copy of its weight. The loader's weights are inference
    # tensors, which autograd cannot save for backward; a copy made outside inference mode can be.
    return weight


def editable_shapes(model) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for every weight and bias ComfyUI can wrap (layers of comfy.ops)."""
    shapes = {}
    for name, module in model.model.named_modules():
        if not name.startswith(COMFY_UNET_PREFIX) or not hasattr(module, "weight_function"):
            continue
        for kind in ("weight", "bias"):
            tensor = getattr(module, kind, None)
            if isinstance(tensor, Tensor):
                shapes[f"{name}.{kind}"] = tuple(tensor.shape)
    return shapes


def kohya_names(model) -> dict[str, str]:
    """Module path (``diffusion_model.<ldm path>``) -> kohya name, taken from ComfyUI's own LoRA key map so that
    what this pack writes is what ComfyUI's LoraLoader reads. The diffusers-layout ``lora_unet_`` name (what A1111
    and Forge read) is preferred; modules without one keep ComfyUI's ldm-layout name."""
    import comfy.lora

    names: dict[str, str] = {}
    for lora_key, weight_key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if not lora_key.startswith("lora_unet_") or not weight_key.endswith(".weight"):
            continue
        module = weight_key[: -len(".weight")]
        ldm_name = "lora_unet_" + module[len(COMFY_UNET_PREFIX):].replace(".", "_")
        if module not in names or names[module] == ldm_name:
            names[module] = lora_key
    return names


def _release(patcher) -> None:
    """Take ``patcher`` out of ComfyUI's loaded-model list and restore the weights it patched."""
    import comfy.model_management as mm

    for index in reversed(range(len(mm.current_loaded_models))):
        if mm.current_loaded_models[index].model is patcher:
            mm.current_loaded_models.pop(index).model_unload()


def loose_parameters(model) -> dict[str, Tensor]:
    """Parameters of the diffusion model that no comfy.ops layer owns, so no weight function can copy them: the
    QK-norm scales of Flux and SD3.5, Chroma's and others' plain parameters. They stay inference tensors."""
    owned = set()
    for name, module in model.model.named_modules():
        if hasattr(module, "weight_function"):
            owned.update(f"{name}.{kind}" for kind, _ in module.named_parameters(recurse=False))
    return {name: parameter for name, parameter in model.model.named_parameters()
            if name.startswith(COMFY_UNET_PREFIX) and name not in owned}


@contextlib.contextmanager
def wrapped(model, edit: EditSet):
    """A clone of ``model`` whose layers apply ``edit`` (and copy every other weight) while loaded; on the way
    out, the wrappers are taken off the shared module and the clone is unloaded, whatever happened."""
    import comfy.model_management

    patcher = model.clone()
    ours = {id(_copy_through)}
    edited = set()
    for name, delta in edit.items():
        patcher.add_weight_wrapper(name, delta)
        ours.add(id(delta))
        edited.add(name)
    for name in editable_shapes(model):
        if name not in edited:  # biases too: layer_norm saves its bias for backward
            patcher.add_weight_wrapper(name, _copy_through)
    with torch.inference_mode(False):
        # autograd cannot save inference tensors: the clone holds ordinary copies while loaded (restored on unload)
        for name, parameter in loose_parameters(model).items():
            patcher.add_object_patch(name, torch.nn.Parameter(parameter.detach().clone(), requires_grad=False))
    frozen = []
    try:
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
        # ComfyUI loads every weight with requires_grad set; left so, backward would compute (and keep) a gradient
        # for every base weight through the copies the wrappers make: a whole model's worth of wasted memory, and
        # an error on fp8-stored weights. Only the edit trains. The flags are put back on the way out.
        for parameter in patcher.model.parameters():
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen.append(parameter)
        yield patcher
    finally:
        with torch.inference_mode():  # where ComfyUI set the flags (outside it, inference tensors refuse them)
            for parameter in frozen:
                parameter.requires_grad_(True)
        for module in patcher.model.modules():
            for kind in ("weight_function", "bias_function"):
                functions = getattr(module, kind, None)
                if functions:
                    setattr(module, kind, [f for f in functions if id(f) not in ours])
        _release(patcher)


def _pack_activation(tensor: Tensor) -> Tensor:
    # Flux's blocks add to their streams in place after a LayerNorm saved them for backward, which autograd
    # refuses ("modified by an inplace operation"); saving activations (not weights or inputs) by copy gives
    # exact gradients without touching ComfyUI. Gradient checkpointing would hide the error but recompute from
    # the overwritten tensors (ComfyUI's trainer: gradients off by up to 0.2% on a tiny Flux).
    return tensor.clone() if tensor.grad_fn is not None and tensor.ndim >= 3 else tensor


def saving_activations_by_copy():
    """The autograd context of a flow model's training forward (see ``_pack_activation``)."""
    return torch.autograd.graph.saved_tensors_hooks(_pack_activation, lambda tensor: tensor)


def _checkpointed_block(args: dict, extra: dict) -> dict:
    """A transformer block run under activation checkpointing: no activation is kept in the forward pass, the
    block runs again in backward to rebuild them. Exact on Flux's in-place blocks because (1) the block gets copies
    of its inputs, which it adds to in place, so the kept inputs stay what the rerun needs; (2) the rerun saves its
    activations by copy (``saving_activations_by_copy``), as the plain training forward does. torch's non-reentrant
    checkpointing keeps the rerun's tensors by reference, which the block's in-place additions then overwrite
    (gradients off by ~0.3% on a tiny Flux), so this is the reentrant kind, with an anchor that requires grad so the
    block's output does even when none of its inputs do (LoRA on the first block)."""
    import torch.utils.checkpoint

    names = [name for name, value in args.items() if isinstance(value, Tensor)]
    rest = {name: value for name, value in args.items() if name not in names}
    block = _frozen(extra["original_block"])
    keys: list[str] = []

    def run(_anchor, *tensors):
        with saving_activations_by_copy():
            out = block({**rest, **{name: t.clone() for name, t in zip(names, tensors)}})
        keys[:] = sorted(out)
        return tuple(out[key] for key in keys)

    anchor = torch.ones((), requires_grad=True)
    outputs = torch.utils.checkpoint.checkpoint(run, anchor, *(args[name] for name in names), use_reentrant=True)
    return dict(zip(keys, outputs))


def _frozen(function):
    """``function`` with the variables it closes over fixed at their present values. ComfyUI defines each block's
    ``original_block`` inside its loop over blocks, closing over the loop variable; called again in backward (the
    recomputation), it would run the *last* block. A frozen copy runs the block it was handed for."""
    import types

    if not function.__closure__:
        return function
    cells = []
    for cell in function.__closure__:
        try:
            cells.append(types.CellType(cell.cell_contents))
        except ValueError:  # a variable not bound yet keeps its live cell
            cells.append(cell)
    return types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              tuple(cells))


def checkpointing_options(model) -> dict:
    """``transformer_options`` that run every SD3/Flux transformer block of ``model`` through ``_checkpointed_block``
    (ComfyUI's "dit" block-replace protocol, which its MMDiT and Flux honour)."""
    network = model.model.diffusion_model
    replace = {}
    for blocks, kind in (("joint_blocks", "double_block"), ("double_blocks", "double_block"),
                         ("single_blocks", "single_block")):
        for index in range(len(getattr(network, blocks, ()))):
            replace[(kind, index)] = _checkpointed_block
    if not replace:
        raise RGDInputError("gradient checkpointing in-graph works on SD3/Flux transformer blocks; this model has "
                            "none: turn gradient_checkpointing off.")
    return {"patches_replace": {"dit": replace}}


class ComfyHost:
    """The recipe's host for ComfyUI's MODEL and CLIP (``rgd_core.hosts.base``): the loaded model samples its own
    data with ComfyUI's sampler; training wraps the layers of a clone (``wrapped``) so that the edit is applied as
    the model runs and the MODEL passed in is never written."""

    # The wrappers sit on the modules the clone shares with ``model``: sampling while training would see the edit,
    # so every pair training may draw is sampled before the first step.
    samples_while_training = False

    def __init__(self, model, clip, settings: SamplerSettings, on_prompt: Callable[[], None] = lambda: None,
                 gradient_checkpointing: bool = False):
        self.model, self.clip, self.settings, self.on_prompt = model, clip, settings, on_prompt
        # checked now, before minutes of sampling
        self.training_options = checkpointing_options(model) if gradient_checkpointing else {}
        self.prediction_type = prediction_type(model)
        self.noise_schedule = noise_schedule(model)
        # ComfyUI's samplers and our training both call the model through this module's forward
        self.evaluated_module = getattr(model.model, "diffusion_model", None)
        self.patcher = None  # the wrapped clone while training (previews sample with it)

    def paired_data(self, forget_prompts: Sequence[str], retain_prompts: Sequence[str], seed: int,
                    rows: Sequence[int] | None = None) -> PairedData:
        return build_data(self.model, self.clip, forget_prompts, retain_prompts, seed, self.settings, self.on_prompt,
                          rows)

    @contextlib.contextmanager
    def training(self, scope: str, lora_rank: int = 4, lora_alpha: float | None = None, seed: int = 0):
        device = self.model.load_device
        edit = make_edit(editable_shapes(self.model), scope, rank=lora_rank, alpha=lora_alpha, seed=seed,
                         device=device)
        with wrapped(self.model, edit) as patcher:
            self.patcher = patcher

            flow = self.prediction_type == FLOW
            options = {"transformer_options": self.training_options} if self.training_options else {}

            def denoise(x, sigma, cond):
                with saving_activations_by_copy() if flow else contextlib.nullcontext():
                    return patcher.model.apply_model(x, sigma.to(x.device), **options,
                                                     **{k: v.to(x.device) for k, v in cond.items()})

            predict = predict_from_denoiser(denoise, self.noise_schedule, self.prediction_type)
            try:
                # the EditSet is what trains; the model call already applies it through the wrappers
                yield Trainee(edit, lambda module, x_t, t, cond: predict(x_t, t, cond), in_place=True,
                              place=lambda module, x0: x0.to(device),
                              evaluated=getattr(patcher.model, "diffusion_model", None))
            finally:
                self.patcher = None


def unlearn(model, clip, forget: Sequence[str], retain: Sequence[str], config: UnlearnConfig, scope: str,
            batch_size: int, lora_rank: int, settings: SamplerSettings, on_prompt=lambda: None,
            on_step=lambda record: None, should_stop=None, vae=None, preview_every: int = 0,
            on_preview=lambda step, image: None, phases: dict | None = None,
            gradient_checkpointing: bool = False, pair_concepts: Sequence[str] = (),
            judge: tuple[JudgeProbe, Callable[[np.ndarray], list[bool]]] | None = None,
            on_judged_base: Callable[[dict], None] = lambda shares: None):
    """RGD on ComfyUI's MODEL through the one recipe (``run_unlearning``) and return (edit, records). The MODEL
    passed in is never written: the edit lives in weight wrappers of a clone.

    With a ``vae`` and ``preview_every`` N > 0, every N steps (and after the last) the model as trained so far
    samples the first forget and retain prompts from one fixed noise, and ``on_preview(step, PIL image)`` gets them.
    ``phases``, a dict, receives the seconds and model evaluations of the data and training phases.
    ``gradient_checkpointing`` recomputes SD3/Flux blocks' activations in backward instead of keeping them.
    ``pair_concepts`` (a Prompt Set of several concepts) makes the adaptive stop wait for (and retire) each of them.
    ``judge`` (a probe and its test of each image, ``rgd_core.evaluate.judges``; needs the ``vae``) decides the
    adaptive stop instead of the loss ratio: the model as trained so far draws the probe's forget prompts from noise
    of its own stream (seed + 1) and the run ends once at most ``config.stop_share`` of each concept's show it.
    Before any data are sampled the base MODEL draws the same probe, and ``on_judged_base(shares)`` hears the result.
    """
    import comfy.model_management

    host = ComfyHost(model, clip, settings, on_prompt, gradient_checkpointing)
    judged = None
    if judge is not None:
        probe, shown = judge  # the node has checked that a vae comes with it (check_judge)
        probe_entries, empty = encode(clip, list(probe.forget_prompts)), encode(clip, [""])[0]

        def sample_from(patcher):
            with torch.no_grad():
                latents = sample_latents(patcher, probe_entries, empty, config.seed + 1, settings)
            return decoded_images(patcher, vae, latents)

        # the trained edit acts through the wrappers of ``host.patcher``; the probe's prompts are encoded once
        judged = image_judge(lambda _edit, _prompts: sample_from(host.patcher), probe, shown)
        base_shares = image_judge(lambda _model, _prompts: sample_from(model), probe, shown)(model)
        on_judged_base(base_shares)
    callbacks = [on_step]
    if vae is not None and preview_every > 0:
        shown = encode(clip, [forget[0], retain[0]])
        negative = encode(clip, [""])[0]

        def preview(record):
            step = record["step"] + 1
            if step % preview_every == 0 or step == config.steps:
                on_preview(step, preview_image(host.patcher, vae, shown, negative, config.seed, settings))

        callbacks.append(preview)
    recipe = RecipeSettings(config, scope, batch_size, lora_rank, data_seed=config.seed)
    stop = should_stop or comfy.model_management.processing_interrupted
    with torch.inference_mode(False):
        try:
            result = run_unlearning(host, forget, retain, recipe, callbacks, should_stop=stop,
                                    pair_concepts=pair_concepts, judge=judged)
        except UnlearningCancelled:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
    if phases is not None:
        add_phases(phases, result.phases)
    return result.module, result.records


def edit_to_lora(model, edit: EditSet, metadata: dict) -> RGDEdit:
    return RGDEdit(kohya_tensors(edit, kohya_names(model)), metadata)


def apply_lora(model, lora: dict):
    """``model`` with the LoRA/diff patches added, through the same call LoraLoader makes."""
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model, None, dict(lora), 1.0, 0)
    return patched


# --- files ---------------------------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    """A save prefix may name sub-folders of the output folder, nothing outside it."""
    text = str(prefix).strip()
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or ":" in text or "\0" in text or ".." in parts or "" in parts[:-1] \
            or not parts[-1] or parts[-1] == ".":
        raise RGDInputError(
            f"filename prefix {prefix!r} must be a relative name inside the output folder "
            "(no '..', ':' or leading '/')."
        )
    return text


DESTINATIONS = ("models", "output")


def output_path(prefix: str, suffix: str = "", kind: str = "checkpoints", destination: str = "output") -> str:
    """``<folder>/<prefix><suffix>_<counter>_.safetensors`` with ComfyUI's counter (and its own escape check).
    ``destination`` "models" is the first folder ComfyUI lists for ``kind`` (checkpoints, loras), so the file shows
    up in the loaders at once; "output" is ComfyUI's output folder, where CheckpointSave writes."""
    import folder_paths

    if destination not in DESTINATIONS:
        raise RGDInputError(f"destination must be one of {', '.join(DESTINATIONS)}, not {destination!r}.")
    if destination == "models":
        root = os.path.abspath(folder_paths.get_folder_paths(kind)[0])
    else:
        root = folder_paths.get_output_directory()
    folder, name, counter, _, _ = folder_paths.get_save_image_path(check_prefix(prefix) + suffix, root)
    return os.path.join(folder, f"{name}_{counter:05}_.safetensors")


def _atomic(path: str, write: Callable[[str], None]) -> str:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def checkpoint_metadata(model, extra: dict) -> tuple[dict, dict]:
    """(metadata, extra tensors) as ComfyUI's CheckpointSave writes them, plus this pack's keys."""
    import comfy.model_base

    metadata, extra_keys = {}, {}
    sampling = model.get_model_object("model_sampling")
    if model.model.model_type == comfy.model_base.ModelType.EPS:
        metadata["modelspec.predict_key"] = "epsilon"
    elif model.model.model_type == comfy.model_base.ModelType.V_PREDICTION:
        metadata["modelspec.predict_key"] = "v"
        extra_keys["v_pred"] = torch.tensor([])
        if getattr(sampling, "zsnr", False):
            extra_keys["ztsnr"] = torch.tensor([])
    metadata.update({str(k): str(v) for k, v in extra.items()})
    return metadata, extra_keys


def save_checkpoint(model, clip, vae, path: str, metadata: dict) -> str:
    """A single-file checkpoint with the MODEL's patches baked in, written by ComfyUI's own saver, atomically."""
    import comfy.sd

    header, extra_keys = checkpoint_metadata(model, metadata)
    return _atomic(path, lambda tmp: comfy.sd.save_checkpoint(tmp, model, clip, vae, None, metadata=header,
                                                             extra_keys=extra_keys))


def save_lora(lora: dict, path: str, metadata: dict, dtype: torch.dtype) -> str:
    """The edit as a kohya file, through the same writer (and metadata) as the headless LoRA."""
    from rgd_core.edits.kohya import save_kohya_file

    save_kohya_file(path, lora, {str(k): v for k, v in metadata.items()}, dtype)
    return path

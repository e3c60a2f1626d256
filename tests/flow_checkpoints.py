"""Tiny random-weight Flux.1 and SD3.x checkpoints and text encoders in the on-disk layouts users hold.

ComfyUI and Forge users keep flow models as separate ``.safetensors`` files, not diffusers folders:
- ``models/diffusion_models/flux1-dev.safetensors`` (or ``flux1-schnell``): Black Forest Labs' own key names, bare
  (``double_blocks.0.img_attn.qkv.weight``, ...); ``guidance_in.*`` only in dev.
- ``sd3_medium.safetensors`` / ``sd3.5_*.safetensors``: Stability's MMDiT key names (``joint_blocks.N.x_block...``),
  bare in ``diffusion_models/`` or under ``model.diffusion_model.`` in a checkpoint; SD3.5 adds RMS q/k norms
  (``ln_q``/``ln_k``) and, in SD3.5-medium, a second self-attention ``x_block.attn2`` in its first blocks.
- ``models/text_encoders/clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl_fp16.safetensors``: Hugging Face
  transformers key names, bare (what ComfyUI's ``comfy.sd.load_clip`` / ``detect_te_model`` read).
- ``sd3_medium_incl_clips_t5xxlfp16.safetensors``: everything in one file under ``model.diffusion_model.`` and
  ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.`` (the prefixes diffusers' single-file loader expects).

Real files are gigabytes, so rgd's headless loaders are tested on these tiny stand-ins, built from key lists written
here (no ComfyUI, diffusers or transformers code is needed to build them) and checked against diffusers' converters
and transformers' classes. Every tensor is float32 and deterministic in ``seed``: weights N(0, 0.02^2), norm scales 1,
biases 0.

Key-set facts mimicked (inferred from the loaders that read the real files, see each function):
- clip_l.safetensors holds exactly CLIPTextModel's ``text_model.*`` keys: no ``position_ids`` buffer, no
  ``text_projection``, no ``logit_scale`` (kohya's musubi-tuner loads the file ComfyUI distributes with
  ``load_state_dict(strict=True)`` into transformers' CLIPTextModel; its 246 MB are 123.06 M fp16 parameters, the
  encoder without a projection).
- clip_g.safetensors adds ``text_projection.weight`` (CLIPTextModelWithProjection; A1111's SD3 code loads it
  strictly into a model with a projection).
- t5xxl_fp16.safetensors holds the T5 v1.1 encoder with *both* ``shared.weight`` and ``encoder.embed_tokens.weight``
  (equal tensors): its 9.79 GB is 4.894 G fp16 parameters, one 32128 x 4096 embedding more than the encoder has.
  The relative attention bias exists on block 0 only. The SD3 all-in-one file (15.8 GB) carries both as well.

Sizes that tie the files together (as in the real models, scaled down):
- Flux: ``vector_in`` takes the CLIP-L pooled width (CLIP-L hidden), ``txt_in`` the T5 width.
- SD3: ``y_embedder`` takes CLIP-L pooled + CLIP-G pooled (their projection widths = hidden widths);
  ``context_embedder`` takes the T5 width. SD3 concatenates the CLIP-L and CLIP-G hidden states along the feature
  axis and zero-pads them to the T5 width, so the T5 width must be >= CLIP-L hidden + CLIP-G hidden
  (real: 768 + 1280 <= 4096; in ``write_comfyui_layout`` 64 + 128 <= 256).
- ComfyUI derives the MMDiT depth from its width (``depth = hidden // 64``); keep ``depth == hidden // 64`` for a
  file ComfyUI's detection should read. Its Flux and text-encoder detection hard-codes real widths, so tiny Flux and
  tiny text-encoder files load only in code that reads shapes from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("flux-dev", "flux-schnell", "sd3", "sd3.5")

FLUX_HEAD_DIM = 128  # Flux attention heads are 128 wide; axes_dims_rope (16, 56, 56) sums to it
MMDIT_HEAD_DIM = 64  # SD3/SD3.5 attention heads are 64 wide
LATENT_CHANNELS = 16  # the Flux/SD3 VAE latent
PATCH = 2  # both patchify latents 2 x 2 (Flux packs them into 64 input features)
TIME_FREQ = 256  # width of the sinusoidal timestep (and Flux guidance) embedding fed to time_in / t_embedder

CLIP_VOCAB = 49408  # the real CLIP BPE vocabulary size, so a real CLIP tokenizer's ids fit
CLIP_POSITIONS = 77
CLIP_L_HIDDEN = 64
CLIP_G_HIDDEN = 128  # differs from CLIP-L so that a swapped or mis-concatenated encoder shows as a shape error
CLIP_HEAD_DIM = 64
# One T5 for every family, as users share one t5xxl file between Flux and SD3. SD3 needs it at least as wide as
# CLIP_L_HIDDEN + CLIP_G_HIDDEN: the concatenated CLIP hidden states are zero-padded to it.
T5_WIDTH = 256

UNET_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."

# Words of the tiny T5 tokenizer: enough for the test prompts; anything else becomes <unk>.
T5_WORDS = """
a an the of in on at with and or by to from for under over near behind beside through without
photo photograph picture image painting drawing sketch illustration render portrait landscape close-up
oil watercolor pencil charcoal digital ink acrylic style art artwork detailed realistic abstract
cat cats dog dogs bird birds horse fish cow sheep rabbit fox lion tiger bear elephant zebra
car truck bicycle boat plane train house church castle bridge tower road street city village
garden forest field mountain mountains river lake sea ocean beach sky cloud clouds sun moon star stars
tree trees flower flowers grass rock rocks snow rain night day sunset morning
man woman person people child girl boy face hands nude naked clothed dress shirt hat
red green blue yellow orange purple pink black white gray brown golden silver
striped spotted small big large tiny old young happy sad beautiful dark bright colorful
sitting standing running flying sleeping walking eating playing
van gogh monet picasso rembrandt famous
one two three many
"""
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
T5_PUNCTUATION = (",", ".", "!", "?", "-", "'", ":", ";")
T5_EXTRA_IDS = 100  # T5's sentinel tokens <extra_id_0..99>, last in the vocabulary; T5Tokenizer expects them


def t5_vocab() -> list[tuple[str, float]]:
    """The tiny T5 Unigram vocabulary (piece, log-probability), in id order.

    Specials, then whole words with SentencePiece's word-start mark "▁" in lower case and capitalised (T5 is case
    sensitive and has no lower-casing step), then punctuation (so "garden," is "▁garden" + ","), then the sentinels
    in T5's order (<extra_id_99> first, <extra_id_0> last). No single letters and no bare "▁": an unknown word
    becomes one <unk> rather than spelled-out pieces.
    """
    lower = T5_WORDS.split()
    words = list(dict.fromkeys(lower + [word.capitalize() for word in lower]))
    pieces = [(token, 0.0) for token in T5_SPECIALS]
    pieces += [("▁" + word, -5.0) for word in words] + [(mark, -6.0) for mark in T5_PUNCTUATION]
    pieces += [(f"<extra_id_{n}>", 0.0) for n in reversed(range(T5_EXTRA_IDS))]
    return pieces


# T5 pads its 32100 ids to 32128 embedding rows (a multiple of 128); the tiny encoder does the same.
T5_VOCAB_SIZE = -(-len(t5_vocab()) // 128) * 128


class _Weights:
    """Deterministic tensor factory: one generator, consumed in key order."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}

    def normal(self, key: str, *shape: int) -> None:
        self.state[key] = torch.randn(*shape, generator=self.generator) * 0.02

    def ones(self, key: str, size: int) -> None:
        self.state[key] = torch.ones(size)

    def linear(self, name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        self.normal(f"{name}.weight", out_features, in_features)
        if bias:
            self.state[f"{name}.bias"] = torch.zeros(out_features)

    def layer_norm(self, name: str, size: int) -> None:
        self.ones(f"{name}.weight", size)
        self.state[f"{name}.bias"] = torch.zeros(size)


# --- diffusion transformers ------------------------------------------------------------------------------------


def _check_heads(hidden: int, head_dim: int) -> None:
    if hidden % head_dim:
        raise ValueError(f"hidden={hidden} must be a multiple of the head width {head_dim}")


def flux_state_dict(
    depth: int = 1,
    single: int = 1,
    hidden: int = 128,
    vec_in: int = 64,
    context: int = 64,
    guidance: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Flux.1 in BFL's layout (flux1-dev/-schnell.safetensors, bare keys); ``guidance=False`` is schnell.

    Every Linear has a bias (qkv_bias=True in both real models); the q/k RMS norms have a ``scale`` per head channel;
    the final LayerNorm has no parameters. mlp_ratio 4; a single block fuses q, k, v and the MLP input in
    ``linear1`` (3h + 4h rows) and attention output and MLP output in ``linear2`` (h + 4h columns).

    diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` (0.31 and 0.42) hard-codes the real width 3072
    when it splits ``linear1`` and needs at least one single block: it cannot convert ``hidden != 3072``.
    """
    _check_heads(hidden, FLUX_HEAD_DIM)
    w = _Weights(seed)
    mlp = 4 * hidden
    w.linear("img_in", hidden, LATENT_CHANNELS * PATCH * PATCH)
    embedders = [("time_in", TIME_FREQ), ("vector_in", vec_in)] + ([("guidance_in", TIME_FREQ)] if guidance else [])
    for name, width in embedders:
        w.linear(f"{name}.in_layer", hidden, width)
        w.linear(f"{name}.out_layer", hidden, hidden)
    w.linear("txt_in", hidden, context)
    for i in range(depth):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            w.linear(f"{block}_mod.lin", 6 * hidden, hidden)  # shift/scale/gate for attention and MLP
            w.linear(f"{block}_attn.qkv", 3 * hidden, hidden)
            w.ones(f"{block}_attn.norm.query_norm.scale", FLUX_HEAD_DIM)
            w.ones(f"{block}_attn.norm.key_norm.scale", FLUX_HEAD_DIM)
            w.linear(f"{block}_attn.proj", hidden, hidden)
            w.linear(f"{block}_mlp.0", mlp, hidden)
            w.linear(f"{block}_mlp.2", hidden, mlp)
    for i in range(single):
        block = f"single_blocks.{i}"
        w.linear(f"{block}.linear1", 3 * hidden + mlp, hidden)
        w.linear(f"{block}.linear2", hidden, hidden + mlp)
        w.ones(f"{block}.norm.query_norm.scale", FLUX_HEAD_DIM)
        w.ones(f"{block}.norm.key_norm.scale", FLUX_HEAD_DIM)
        w.linear(f"{block}.modulation.lin", 3 * hidden, hidden)
    w.linear("final_layer.linear", PATCH * PATCH * LATENT_CHANNELS, hidden)
    w.linear("final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return w.state


def _mmdit_attention(w: _Weights, name: str, hidden: int, qk_norm: bool, proj: bool = True) -> None:
    w.linear(f"{name}.qkv", 3 * hidden, hidden)
    if qk_norm:  # SD3.5's RMSNorm over each 64-wide head
        w.ones(f"{name}.ln_q.weight", MMDIT_HEAD_DIM)
        w.ones(f"{name}.ln_k.weight", MMDIT_HEAD_DIM)
    if proj:
        w.linear(f"{name}.proj", hidden, hidden)


def sd3_state_dict(
    depth: int = 2,
    hidden: int = 128,
    pooled: int = CLIP_L_HIDDEN + CLIP_G_HIDDEN,
    context: int = T5_WIDTH,
    pos_embed_max: int = 16,
    qk_norm: bool = False,
    attn2_blocks: tuple[int, ...] = (),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """SD3/SD3.5 MMDiT in Stability's layout (the transformer of sd3_medium / sd3.5_*.safetensors, bare keys).

    ``pooled`` = CLIP-L + CLIP-G pooled widths, ``context`` = T5 width (>= CLIP-L + CLIP-G hidden widths, see the
    module docstring). The last joint block's context stream is "pre_only": it only feeds the joint attention, so it
    has no ``attn.proj``, no MLP and a 2-way modulation. ``qk_norm`` adds SD3.5's ``ln_q``/``ln_k`` to every attention
    (the pre-only one too); a block in ``attn2_blocks`` gets SD3.5-medium's ``x_block.attn2`` and a 9-way x-stream
    modulation. The LayerNorms inside blocks and the final one have no parameters. ``pos_embed`` (1, P^2, hidden)
    covers latents up to ``2 * pos_embed_max`` pixels a side; diffusers' converter requires it.
    """
    _check_heads(hidden, MMDIT_HEAD_DIM)
    w = _Weights(seed)
    w.normal("pos_embed", 1, pos_embed_max * pos_embed_max, hidden)
    w.normal("x_embedder.proj.weight", hidden, LATENT_CHANNELS, PATCH, PATCH)
    w.state["x_embedder.proj.bias"] = torch.zeros(hidden)
    w.linear("t_embedder.mlp.0", hidden, TIME_FREQ)
    w.linear("t_embedder.mlp.2", hidden, hidden)
    w.linear("y_embedder.mlp.0", hidden, pooled)
    w.linear("y_embedder.mlp.2", hidden, hidden)
    w.linear("context_embedder", hidden, context)
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            block = f"joint_blocks.{i}.{stream}"
            pre_only = stream == "context_block" and i == depth - 1
            self_attn = stream == "x_block" and i in attn2_blocks
            _mmdit_attention(w, f"{block}.attn", hidden, qk_norm, proj=not pre_only)
            if self_attn:
                _mmdit_attention(w, f"{block}.attn2", hidden, qk_norm)
            if not pre_only:
                w.linear(f"{block}.mlp.fc1", 4 * hidden, hidden)
                w.linear(f"{block}.mlp.fc2", hidden, 4 * hidden)
            mods = 2 if pre_only else 9 if self_attn else 6
            w.linear(f"{block}.adaLN_modulation.1", mods * hidden, hidden)
    w.linear("final_layer.linear", PATCH * PATCH * LATENT_CHANNELS, hidden)
    w.linear("final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return w.state


def prefixed(state: dict[str, torch.Tensor], prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """The same tensors under ``prefix`` (ComfyUI/A1111 "checkpoint" layout for the diffusion model)."""
    return {prefix + key: value for key, value in state.items()}


# --- text encoders ---------------------------------------------------------------------------------------------


def clip_state_dict(
    hidden: int = 64, layers: int = 2, intermediate: int = 128, projection: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A CLIP text encoder as ComfyUI's clip_l.safetensors (``projection=False``) or clip_g.safetensors (True).

    Keys are transformers' CLIPTextModel / CLIPTextModelWithProjection ones (``text_model.*``), without the
    ``position_ids`` buffer (transformers has not saved it since 4.31; the real files lack it) and, for CLIP-L,
    without ``text_projection`` (SD3 uses an identity there). Heads are 64 wide. Real configs: CLIP-L hidden_act
    "quick_gelu", CLIP-G "gelu". transformers >= 5.6 flattened CLIPTextModel (its keys lack ``text_model.``; the
    projection class keeps them), so a strict load there needs the prefix removed.
    """
    _check_heads(hidden, CLIP_HEAD_DIM)
    w = _Weights(seed)
    w.normal("text_model.embeddings.token_embedding.weight", CLIP_VOCAB, hidden)
    w.normal("text_model.embeddings.position_embedding.weight", CLIP_POSITIONS, hidden)
    for i in range(layers):
        layer = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w.linear(f"{layer}.self_attn.{proj}", hidden, hidden)
        w.layer_norm(f"{layer}.layer_norm1", hidden)
        w.linear(f"{layer}.mlp.fc1", intermediate, hidden)
        w.linear(f"{layer}.mlp.fc2", hidden, intermediate)
        w.layer_norm(f"{layer}.layer_norm2", hidden)
    w.layer_norm("text_model.final_layer_norm", hidden)
    if projection:
        w.linear("text_projection", hidden, hidden, bias=False)
    return w.state


def t5_state_dict(
    d_model: int = 64,
    d_ff: int = 128,
    layers: int = 2,
    heads: int = 2,
    d_kv: int = 32,
    vocab: int = T5_VOCAB_SIZE,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A T5 v1.1 encoder (gated GELU, no biases, RMS layer norms) as ComfyUI's t5xxl_fp16.safetensors.

    The file stores the tied embedding twice, as ``shared.weight`` and ``encoder.embed_tokens.weight`` (separate
    equal tensors: safetensors refuses shared storage); the relative position bias (32 buckets x heads) is on
    block 0 only.
    """
    w = _Weights(seed)
    w.normal("shared.weight", vocab, d_model)
    w.state["encoder.embed_tokens.weight"] = w.state["shared.weight"].clone()
    inner = heads * d_kv
    for i in range(layers):
        block = f"encoder.block.{i}.layer"
        for proj in ("q", "k", "v"):
            w.linear(f"{block}.0.SelfAttention.{proj}", inner, d_model, bias=False)
        w.linear(f"{block}.0.SelfAttention.o", d_model, inner, bias=False)
        if i == 0:
            w.normal(f"{block}.0.SelfAttention.relative_attention_bias.weight", 32, heads)
        w.ones(f"{block}.0.layer_norm.weight", d_model)
        w.linear(f"{block}.1.DenseReluDense.wi_0", d_ff, d_model, bias=False)
        w.linear(f"{block}.1.DenseReluDense.wi_1", d_ff, d_model, bias=False)
        w.linear(f"{block}.1.DenseReluDense.wo", d_model, d_ff, bias=False)
        w.ones(f"{block}.1.layer_norm.weight", d_model)
    w.ones("encoder.final_layer_norm.weight", d_model)
    return w.state


def write_t5_tokenizer(folder: Path) -> Path:
    """Write a tiny T5 tokenizer folder like ComfyUI's ``t5_tokenizer`` (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json) and return the tokenizer.json path.

    Same pipeline as T5's: Unigram model, Metaspace word marks, ``</s>`` appended to every sequence, <pad>=0,
    </s>=1, <unk>=2, sentinels as special tokens. Loads with ``PreTrainedTokenizerFast(tokenizer_file=...,
    pad_token="<pad>", eos_token="</s>", unk_token="<unk>")`` and with ``T5TokenizerFast.from_pretrained(folder)``
    (transformers 5's T5Tokenizer rebuilds this pipeline from the vocabulary; the ids come out the same).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = t5_vocab()
    tokenizer = Tokenizer(Unigram(vocab, unk_id=2))
    # Split on white space first, as transformers 5's T5Tokenizer does: runs of spaces then vanish instead of
    # becoming unknown bare "▁" pieces, and both transformers versions tokenize alike.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    sentinels = [piece for piece, _ in vocab if piece.startswith("<extra_id_")]
    tokenizer.add_special_tokens([AddedToken(token, normalized=False) for token in [*T5_SPECIALS, *sentinels]])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "additional_special_tokens": sentinels}))
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": T5_EXTRA_IDS, "legacy": False}
    # T5 takes no token_type_ids; without this list the generic class in transformers 4 returns them.
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **specials}, indent=2))
    return path


# --- file layouts ----------------------------------------------------------------------------------------------


def _encoder_states(family: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The text encoders of a family. CLIP-L and T5 are the same for every family, as for real users; the seed offsets
    keep their tensors distinct from the transformer's."""
    states = {"clip_l": clip_state_dict(CLIP_L_HIDDEN, intermediate=2 * CLIP_L_HIDDEN, seed=seed + 1)}
    if family.startswith("sd3"):
        g = CLIP_G_HIDDEN
        states["clip_g"] = clip_state_dict(g, intermediate=2 * g, projection=True, seed=seed + 2)
    states["t5"] = t5_state_dict(T5_WIDTH, d_ff=2 * T5_WIDTH, seed=seed + 3)
    return states


def _transformer_state(family: str, seed: int) -> dict[str, torch.Tensor]:
    if family in ("flux-dev", "flux-schnell"):
        return flux_state_dict(vec_in=CLIP_L_HIDDEN, context=T5_WIDTH, guidance=family == "flux-dev", seed=seed)
    if family in ("sd3", "sd3.5"):
        sd35 = family == "sd3.5"  # SD3.5-medium-like: q/k RMS norms and attn2 in block 0
        return sd3_state_dict(qk_norm=sd35, attn2_blocks=(0,) if sd35 else (), seed=seed)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


TRANSFORMER_FILES = {
    "flux-dev": "flux1-dev.safetensors",
    "flux-schnell": "flux1-schnell.safetensors",
    "sd3": "sd3_medium.safetensors",
    "sd3.5": "sd3.5_medium.safetensors",
}


def write_comfyui_layout(root: Path, family: str, seed: int = 0) -> dict[str, Path]:
    """Write a ComfyUI models folder for ``family``: diffusion_models/<file> (bare keys) and text_encoders/
    clip_l.safetensors, [clip_g.safetensors,] t5xxl.safetensors and t5_tokenizer/tokenizer.json.

    Returns the paths by role: "transformer", "clip_l", ["clip_g",] "t5", "t5_tokenizer". Several families may share
    one root (one seed), like a real models folder: their text-encoder files are identical.
    """
    from safetensors.torch import save_file

    root = Path(root)
    transformer = _transformer_state(family, seed)
    (root / "diffusion_models").mkdir(parents=True, exist_ok=True)
    paths = {"transformer": root / "diffusion_models" / TRANSFORMER_FILES[family]}
    save_file(transformer, str(paths["transformer"]))
    encoders = root / "text_encoders"
    encoders.mkdir(parents=True, exist_ok=True)
    for role, state in _encoder_states(family, seed).items():
        paths[role] = encoders / ("t5xxl.safetensors" if role == "t5" else f"{role}.safetensors")
        save_file(state, str(paths[role]))
    paths["t5_tokenizer"] = write_t5_tokenizer(encoders / "t5_tokenizer")
    return paths


def sd3_all_in_one_state_dict(family: str = "sd3", seed: int = 0) -> dict[str, torch.Tensor]:
    """The single-file SD3 layout of sd3_medium_incl_clips_t5xxlfp16.safetensors, without its VAE.

    ``model.diffusion_model.*`` + ``text_encoders.clip_l.transformer.text_model.*`` +
    ``text_encoders.clip_g.transformer.{text_model.*, text_projection.weight}`` +
    ``text_encoders.t5xxl.transformer.{shared.weight, encoder.*}`` (``encoder.embed_tokens.weight`` too: diffusers
    detects the T5 by ``shared.weight``, A1111 by ``encoder.embed_tokens.weight``). The ``first_stage_model.*`` VAE
    of the real file is left out: tests bring their own. Same tensors as ``write_comfyui_layout(root, family, seed)``.
    """
    if family not in ("sd3", "sd3.5"):
        raise ValueError(f"sd3_all_in_one_state_dict takes 'sd3' or 'sd3.5', not {family!r}")
    encoders = _encoder_states(family, seed)
    return {
        **prefixed(_transformer_state(family, seed)),
        **prefixed(encoders["clip_l"], CLIP_L_PREFIX),
        **prefixed(encoders["clip_g"], CLIP_G_PREFIX),
        **prefixed(encoders["t5"], T5_PREFIX),
    }

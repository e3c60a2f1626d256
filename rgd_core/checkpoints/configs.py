"""Stable Diffusion model configs and CLIP tokenizers that need no network: SD 1.x, SD 2.x, SD 2.x 768-v, SDXL.

A single-file checkpoint (``.safetensors`` in the original LDM layout) holds weights only. To build the diffusers
models around it, diffusers needs each component's config, and by default it downloads them from the model hub
(docs/offline.md section 4). rgd never does that: it ships the configs and passes them as ``config=<folder>``.

What ships, under ``rgd_core/checkpoints/configs/``:
    clip_tokenizer/   vocab.json + merges.txt (OpenAI's CLIP BPE, MIT, see its LICENSE), written once by
                      tools/build_tokenizer.py. All four families use this one vocabulary; about 1.4 MB, so it
                      ships once, not once per family.
    <family>/         a diffusers-layout folder of configs only: model_index.json, unet/, vae/, text_encoder/
                      (+ text_encoder_2/ for SDXL), scheduler/, and tokenizer/ (+ tokenizer_2/) holding just
                      tokenizer_config.json, the per-family settings (pad token, model_max_length 77).
The config values are those of the public SD 1.5, SD 2.1-base, SD 2.1 (768-v) and SDXL-base-1.0 repositories,
except that the safety checker and feature extractor are left out (``[null, null]``): rgd never loads them.

Why ``config_folder`` materialises a complete folder instead of returning the shipped one: transformers 5's
``CLIPTokenizer.from_pretrained`` does not fail on a folder without vocab.json; it silently builds a tokenizer
that knows 3 tokens. A config-only folder handed to ``from_single_file`` would therefore give a pipeline that
runs and encodes every prompt as garbage. So the only folder this module hands out is complete: the shipped
configs plus the vocabulary copied into every tokenizer subfolder, written once into a cache directory (by a
rename, so a crash or a concurrent process never leaves a half-written folder) under a name that carries a hash
of the shipped files, so an upgrade of rgd never reuses stale files. ``clip_tokenizer`` builds tokenizers in
memory from the shipped files without touching the cache.

Use:
    folder = config_folder("sd1")
    StableDiffusionPipeline.from_single_file(ckpt, config=str(folder), local_files_only=True)
    StableDiffusionXLPipeline.from_single_file(ckpt, config=str(config_folder("sdxl")), local_files_only=True)
    UNet2DConditionModel.from_single_file(ckpt, config=str(folder), subfolder="unet", local_files_only=True)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rgd_core.errors import RGDInputError

if TYPE_CHECKING:  # importing transformers takes seconds; config_folder does not need it
    from transformers import CLIPTokenizer

CONFIG_FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
"""SD 1.x (epsilon, 512 px), SD 2.x base (epsilon, 512 px), SD 2.x 768-v (v_prediction, 768 px), SDXL base."""

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "clip_tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "LICENSE")
CACHE_SUBDIR = "sd_configs"

# The file that holds each component's settings in a diffusers folder.
_CONFIG_FILE = {
    "model_index": "model_index.json",
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
    "tokenizer": "tokenizer/tokenizer_config.json",
    "tokenizer_2": "tokenizer_2/tokenizer_config.json",
}
# tokenizer_config.json keys that CLIPTokenizer's constructor takes; the rest are for diffusers/transformers loaders.
_TOKENIZER_KWARGS = ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token")


def check_family(family: str) -> str:
    """Return ``family`` if rgd ships configs for it, else raise an error that lists the known families."""
    if family not in CONFIG_FAMILIES:
        raise RGDInputError(f"unknown model family {family!r}: use one of {', '.join(CONFIG_FAMILIES)}")
    return family


def tokenizer_subfolders(family: str) -> tuple[str, ...]:
    """The tokenizer folders of a family's pipeline: SDXL has two (CLIP ViT-L and OpenCLIP bigG), the others one."""
    return ("tokenizer", "tokenizer_2") if check_family(family) == "sdxl" else ("tokenizer",)


def component_config(family: str, component: str) -> dict:
    """The shipped config of one component ("unet", "vae", "text_encoder", "scheduler", "tokenizer", ...) as a dict.

    Enough to build a model with ``from_config`` (on the meta device, to inspect shapes without memory) or to read a
    setting such as the scheduler's prediction_type without materialising a folder.
    """
    path = CONFIGS_DIR / check_family(family) / _CONFIG_FILE.get(component, "")
    if component not in _CONFIG_FILE or not path.is_file():
        known = [name for name, rel in _CONFIG_FILE.items() if (CONFIGS_DIR / family / rel).is_file()]
        raise RGDInputError(f"{family} has no component {component!r}: use one of {', '.join(known)}")
    return json.loads(path.read_text(encoding="utf-8"))


def prediction_type(family: str) -> str:
    """What the family's UNet predicts: "epsilon" (noise) or "v_prediction" (SD 2.x 768-v)."""
    return component_config(family, "scheduler")["prediction_type"]


@lru_cache(maxsize=1)
def _bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The shared CLIP vocabulary and merges, parsed once per process (about 0.2 s)."""
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    # The tokenizers library wants merges as pairs; "left right" strings raise a PyMerges TypeError.
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    return vocab, merges


def clip_tokenizer(family: str, which: int = 1) -> "CLIPTokenizer":
    """A CLIP tokenizer for the family's text encoder ``which`` (1, or 2 for SDXL's OpenCLIP bigG), built offline.

    Every family uses the same BPE; they differ in the pad token. SD 1.x and SDXL tokenizer 1 pad with
    ``<|endoftext|>``; SD 2.x and SDXL tokenizer 2 (OpenCLIP) pad with ``!`` (id 0). model_max_length is 77,
    because the pipelines pad prompts to it (transformers' default would be 1e30). Returns a new object on every
    call, since callers may add tokens to it.
    """
    from transformers import CLIPTokenizer

    subfolders = tokenizer_subfolders(family)
    if which not in range(1, len(subfolders) + 1):
        choices = " or ".join(str(n) for n in range(1, len(subfolders) + 1))
        raise RGDInputError(f"{family} has no tokenizer {which!r}: pass which={choices}")
    settings = component_config(family, subfolders[which - 1])
    kwargs = {key: settings[key] for key in _TOKENIZER_KWARGS}
    if _takes_bpe(CLIPTokenizer):
        vocab, merges = _bpe()
        return CLIPTokenizer(vocab=vocab, merges=merges, **kwargs)
    # transformers 4.x: its CLIPTokenizer reads the shipped files itself.
    return CLIPTokenizer(vocab_file=str(TOKENIZER_DIR / "vocab.json"), merges_file=str(TOKENIZER_DIR / "merges.txt"),
                         **kwargs)


def _takes_bpe(tokenizer_class) -> bool:
    """Whether this CLIPTokenizer is transformers 5's (tokenizers-backed, built from an in-memory vocab and merges;
    its constructor ignores ``vocab_file``) rather than transformers 4.x's pure-Python one, which only reads
    ``vocab_file`` and ``merges_file``."""
    import inspect

    return "vocab" in inspect.signature(tokenizer_class.__init__).parameters


def bpe_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], **settings) -> "CLIPTokenizer":
    """A ``transformers.CLIPTokenizer`` over an in-memory BPE (token -> id, merge pairs), on transformers 4.x and 5.

    transformers 5 takes them directly; on 4.x they go through a temporary vocab.json + merges.txt (the merges
    file starts with a version line, which the reader skips). ``settings`` are constructor keywords (pad_token,
    model_max_length, ...).
    """
    from transformers import CLIPTokenizer

    if _takes_bpe(CLIPTokenizer):
        return CLIPTokenizer(vocab=vocab, merges=[tuple(pair) for pair in merges], **settings)
    with tempfile.TemporaryDirectory(prefix="rgd-clip-bpe-") as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
        merges_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return CLIPTokenizer(vocab_file=str(vocab_file), merges_file=str(merges_file), **settings)


def default_cache_dir() -> Path:
    """Where complete config folders go unless the caller says: $RGD_CACHE_DIR, $XDG_CACHE_HOME/rgd or ~/.cache/rgd."""
    if os.environ.get("RGD_CACHE_DIR"):
        return Path(os.environ["RGD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rgd"


@lru_cache(maxsize=None)
def _shipped_digest(family: str) -> str:
    """sha256 over every shipped file a family's complete folder is made of (names and bytes)."""
    digest = hashlib.sha256()
    source = CONFIGS_DIR / family
    files = [(path.relative_to(source).as_posix(), path) for path in sorted(source.rglob("*")) if path.is_file()]
    files += [(f"clip_tokenizer/{name}", TOKENIZER_DIR / name) for name in TOKENIZER_FILES]
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def config_folder(family: str, cache_dir: str | Path | None = None) -> Path:
    """A complete diffusers config folder for ``family`` (configs + tokenizer files, no weights), made on first use.

    Pass it as ``config=str(folder)`` to ``StableDiffusionPipeline.from_single_file`` /
    ``StableDiffusionXLPipeline.from_single_file`` (with ``local_files_only=True``), or with ``subfolder="unet"``
    (``"vae"``) to the model classes' ``from_single_file``. The folder is written once under
    ``<cache_dir>/sd_configs/<family>-<hash>/`` (``cache_dir`` defaults to ``default_cache_dir()``) and reused
    afterwards; about 1.4 MB per tokenizer.
    """
    check_family(family)
    parent = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_SUBDIR
    target = parent / f"{family}-{_shipped_digest(family)[:16]}"
    if target.is_dir():  # only ever created complete, by the rename below
        return target
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _materialise(family, parent, target)
    except OSError as error:
        raise RGDInputError(
            f"cannot write the {family} config folder under {parent} ({error.strerror or error}): "
            "pass cache_dir= (or set RGD_CACHE_DIR) to a writable directory"
        ) from error
    return target


def _materialise(family: str, parent: Path, target: Path) -> None:
    """Build the complete folder in a temporary sibling, then rename it into place in one step."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        shutil.copytree(CONFIGS_DIR / family, staging, dirs_exist_ok=True)
        for subfolder in tokenizer_subfolders(family):
            for name in TOKENIZER_FILES:
                shutil.copyfile(TOKENIZER_DIR / name, staging / subfolder / name)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # a concurrent call that got there first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

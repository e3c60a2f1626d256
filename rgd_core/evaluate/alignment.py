"""CLIP alignment score (AS): how well each generated image matches its own prompt (docs/method.md section 4.2).

Convention: the score of one image is the **plain cosine similarity** between the normalised CLIP image embedding
and the normalised CLIP text embedding of the prompt it was generated from, a number in [-1, 1]; a model's AS is
the mean over its prompts. It is not multiplied by 100 and not clipped at 0, because that is what the paper reports
(SD v1.4 0.352, RGD 0.350 on 100 retain prompts) and what the official evaluation script computes
(``SD/eval-scripts/evaluation-batchwise.py``: normalised open_clip features, diagonal of ``image @ text.T``).
The "CLIPScore" of torchmetrics is ``max(100 * cosine, 0)`` and Hessel et al.'s is ``2.5 * max(cosine, 0)``; for
positive scores, multiply ours by 100 to compare with torchmetrics.

Model: the paper uses open_clip ViT-B-32 ``laion2b_s34b_b79k``; its transformers conversion
(``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``) is a folder this module reads, as is any transformers ``CLIPModel``
folder (``config.json`` with model_type "clip" and ``model.safetensors``). Nothing is downloaded and pickle weights
(``pytorch_model.bin``) are refused. A path to a ``.safetensors`` file inside such a folder means the folder; a
lone CLIP ``.safetensors`` file without its config cannot be used, because head counts are not in the tensors.

Preprocessing follows the folder's ``preprocessor_config.json`` (CLIP's default when it has none: resize the short
side to the model's image size with bicubic filtering, centre crop, normalise) on PIL images, the same steps
open_clip runs on the PNG files in the official script. Prompts are cut to the text model's 77 tokens as open_clip
does. The tokenizer comes from the folder, or is rgd's shipped CLIP BPE when the folder has none (CLIP models share
one vocabulary). Scores are computed in float32 with gradients off; the same inputs and batch size give the same
numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rgd_core.checkpoints.configs import clip_tokenizer
from rgd_core.checkpoints.load import file_sha256
from rgd_core.errors import RGDInputError

DEFAULT_BATCH_SIZE = 32
CONVENTION = "cosine similarity of normalised CLIP image and prompt embeddings, in [-1, 1] (not x100, not clipped)"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def clip_folder(path: str | Path) -> Path:
    """The transformers CLIP folder ``path`` names, checked without loading anything heavy.

    Accepts the folder itself or a ``.safetensors`` file in it. Raises ``RGDInputError`` when the path is missing,
    is not a CLIP model folder, or holds no safetensors weights.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise RGDInputError(f"CLIP model not found: {path}; pass a local transformers CLIP folder (config.json + "
                            "model.safetensors), e.g. a download of laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    folder = path.parent if path.is_file() else path
    if path.is_file() and path.suffix.lower() != ".safetensors":
        raise RGDInputError(f"{path} is not a CLIP model: pass the transformers CLIP folder (config.json + "
                            "model.safetensors) or its .safetensors file")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise RGDInputError(f"{folder} has no config.json: a CLIP model needs its transformers folder "
                            "(config.json + model.safetensors), not a lone weights file")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise RGDInputError(f"{config_file} is not a JSON object; is this a transformers CLIP folder?") from None
    if model_type != "clip":
        raise RGDInputError(f"{folder} is not a CLIP model folder (config.json model_type is {model_type!r}, "
                            "expected 'clip' with both text and vision towers)")
    if not weight_files(folder):
        hint = " (only pickle weights found; convert them to model.safetensors)" if any(
            folder.glob("pytorch_model*.bin")) else ""
        raise RGDInputError(f"{folder} has no model.safetensors{hint}")
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files from_pretrained reads: model.safetensors, or the shards its index lists."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RGDInputError(f"{index} is not a safetensors index (no weight_map)") from None
    return [folder / name for name in shards]


@dataclass
class ClipScorer:
    """A loaded CLIP model with the tokenizer and image processor that belong to it."""

    model: Any
    tokenizer: Any
    processor: Any
    folder: Path
    max_length: int
    device: str = "cpu"

    def describe(self) -> dict:
        """What the report records about the model, enough to tell two runs' models apart."""

        config = self.model.config
        return {"folder": str(self.folder.resolve()),
                "weights_sha256": [file_sha256(f) for f in weight_files(self.folder)],
                "image_size": int(config.vision_config.image_size),
                "patch_size": int(config.vision_config.patch_size),
                "projection_dim": int(config.projection_dim),
                "max_prompt_tokens": self.max_length,
                "device": self.device}


def _image_processor_class():
    import transformers

    # transformers 5 splits CLIP's processor into a torchvision one and a PIL one; the PIL one is what open_clip's
    # transform does and needs no torchvision. transformers 4's CLIPImageProcessor is the PIL one.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def load_clip(path: str | Path, device: str = "cpu") -> ClipScorer:
    """Load a local transformers CLIP folder (or a .safetensors file in it) offline, in float32 on ``device``."""
    from safetensors import SafetensorError
    from transformers import CLIPModel, CLIPTokenizer

    folder = clip_folder(path)
    try:
        model, info = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RGDInputError(f"cannot load the CLIP model in {folder}: {first_line}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # from_pretrained fills missing tensors with random values, which would give meaningless scores
        raise RGDInputError(f"{folder}: the weights lack {len(missing)} CLIP tensors (e.g. {missing[0]}); "
                            "is this a text-only or vision-only checkpoint?")
    model = model.float().eval().to(device)

    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = clip_tokenizer("sd1")
    vocab_size = int(model.config.text_config.vocab_size)
    if len(tokenizer) > vocab_size:
        raise RGDInputError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the text model only "
                            f"{vocab_size}; the folder's tokenizer does not belong to this model")

    processor_class = _image_processor_class()
    if (folder / "preprocessor_config.json").is_file():
        processor = processor_class.from_pretrained(folder, local_files_only=True)
    else:
        size = int(model.config.vision_config.image_size)
        processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    max_length = int(model.config.text_config.max_position_embeddings)
    if 0 < (tokenizer.model_max_length or 0) < max_length:
        max_length = int(tokenizer.model_max_length)
    return ClipScorer(model, tokenizer, processor, folder, max_length, str(device))


def _features(output) -> Any:
    # transformers 4 returns the projected features as a tensor, transformers 5 in pooler_output.
    import torch

    return output if torch.is_tensor(output) else output.pooler_output


def image_embeddings(scorer: ClipScorer, images: np.ndarray) -> Any:
    """Unit-length CLIP embeddings (N, D) of (N, H, W, 3) uint8 RGB images."""
    import torch
    from PIL import Image

    pixels = scorer.processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")
    with torch.no_grad():
        features = _features(scorer.model.get_image_features(pixel_values=pixels["pixel_values"].to(scorer.device)))
    return torch.nn.functional.normalize(features.float(), dim=-1)


def text_embeddings(scorer: ClipScorer, prompts: Sequence[str]) -> Any:
    """Unit-length CLIP embeddings (N, D) of prompts, each cut to the model's token limit."""
    import torch

    tokens = scorer.tokenizer(list(prompts), padding=True, truncation=True, max_length=scorer.max_length,
                              return_tensors="pt")
    with torch.no_grad():
        features = _features(scorer.model.get_text_features(input_ids=tokens["input_ids"].to(scorer.device),
                                                            attention_mask=tokens["attention_mask"].to(scorer.device)))
    return torch.nn.functional.normalize(features.float(), dim=-1)


def alignment_scores(scorer: ClipScorer, images: np.ndarray, prompts: Sequence[str],
                     batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
    """The alignment score of each image with its own prompt (image i with prompt i), in input order."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise RGDInputError(f"images must be an (N, H, W, 3) uint8 array, got {images.dtype} {images.shape}")
    if len(images) != len(prompts):
        raise RGDInputError(f"{len(images)} images but {len(prompts)} prompts; each image needs its own prompt")
    if batch_size < 1:
        raise RGDInputError(f"batch size must be at least 1, got {batch_size}")
    scores: list[float] = []
    for start in range(0, len(images), batch_size):
        image_vectors = image_embeddings(scorer, images[start : start + batch_size])
        text_vectors = text_embeddings(scorer, prompts[start : start + batch_size])
        scores.extend((image_vectors * text_vectors).sum(dim=-1).tolist())
    return scores


def summarize_scores(scores: Sequence[float]) -> dict:
    """Mean, population standard deviation, min and max of a set of scores (None for an empty set)."""
    if not len(scores):
        return {"num_images": 0, "mean": None, "std": None, "min": None, "max": None}
    values = np.asarray(scores, dtype=np.float64)
    return {"num_images": len(values), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def alignment_report(before: Sequence[float], after: Sequence[float], prompts: Sequence[str],
                     model: dict | None = None) -> dict:
    """The ``clip_alignment`` entry of the eval report, JSON-serialisable.

    Layout: ``{"metric", "convention", "model", "before": {"num_images", "mean", "std", "min", "max"},
    "after": {...}, "change": {"mean_difference", "prompts_improved", "prompts_worse"},
    "per_prompt": [{"index", "prompt", "before", "after", "change"}]}``; change is after minus before.
    """
    if not len(before) == len(after) == len(prompts):
        raise RGDInputError(f"alignment scores need one per prompt: {len(before)} before, {len(after)} after, "
                            f"{len(prompts)} prompts")
    summary_before, summary_after = summarize_scores(before), summarize_scores(after)
    differences = [a - b for b, a in zip(before, after)]
    mean_difference = None if not prompts else summary_after["mean"] - summary_before["mean"]
    return {
        "metric": "clip_alignment_score",
        "convention": CONVENTION,
        "model": model or {},
        "before": summary_before,
        "after": summary_after,
        "change": {"mean_difference": mean_difference,
                   "prompts_improved": sum(d > 0 for d in differences),
                   "prompts_worse": sum(d < 0 for d in differences)},
        "per_prompt": [{"index": i, "prompt": prompt, "before": b, "after": a, "change": d}
                       for i, (prompt, b, a, d) in enumerate(zip(prompts, before, after, differences))],
    }

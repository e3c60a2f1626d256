"""User-supplied training images for ``rgd unlearn --forget-images DIR / --retain-images DIR``.

The paper trains on images the base model made itself (``hosts.diffusers_sd.build_paired_data``); a user may
instead bring real pictures of the concept (forget side) or of what must survive (retain side). This module only
finds, checks and prepares those files; the backend VAE-encodes them once and caches the latents.

A folder is read flat, in file-name order (forget image i pairs with retain image i when both sides are images).
Its ``.png``, ``.jpg``/``.jpeg`` and ``.webp`` files are the images; hidden files, sub-folders and anything else are
ignored. As in kohya-style datasets, ``cat.png`` may have its caption in ``cat.txt`` beside it; an image without one
gets a prompt of the prompt set (the backend cycles them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rgd_core.checkpoints.load import file_sha256
from rgd_core.errors import RGDInputError

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
# Bump when the pixels handed to the VAE change (resampling filter, crop rule, background): cached latents then miss.
PREPARATION = "rgb-on-white/lanczos-cover/center-crop/[-1,1]/1"


@dataclass(frozen=True)
class ImageFile:
    """One training image: where it is, its caption (None: take a prompt of the prompt set) and its content hash."""

    path: Path
    caption: str | None
    sha256: str


def find_images(folder: str | Path, side: str = "training") -> list[ImageFile]:
    """The images of ``folder`` in file-name order, each decoded once to prove it is readable, with its caption.

    ``side`` ("forget" or "retain") only words the errors. An absent or empty folder, an image that cannot be
    decoded and an empty or non-UTF-8 caption file each raise a one-line RGDInputError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RGDInputError(f"{side} images folder {folder} does not exist or is not a folder.")
    paths = sorted(path for path in folder.iterdir()
                   if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise RGDInputError(f"{side} images folder {folder} holds no {', '.join(IMAGE_SUFFIXES)} files; "
                            "put the images directly in it (sub-folders are not read).")
    images = []
    for path in paths:
        _open_rgb(path)  # fail now, before minutes of model loading, rather than half-way through encoding
        images.append(ImageFile(path, read_caption(path), _file_sha256(path)))
    return images


def read_caption(image_path: str | Path) -> str | None:
    """The caption in ``<stem>.txt`` next to the image, stripped; None when there is no such file."""
    path = Path(image_path).with_suffix(CAPTION_SUFFIX)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise RGDInputError(f"caption file {path} is not readable UTF-8 text ({_first_line(error)}).") from None
    if not text:
        # an empty caption would train on the unconditional prompt, which is never what the file's author meant
        raise RGDInputError(f"caption file {path} is empty; write the image's caption in it or delete it.")
    return " ".join(text.split())


def images_digest(images: Sequence[ImageFile]) -> str:
    """sha256 over the images' content hashes and captions, in order: what the training data depend on."""
    listing = [[image.sha256, image.caption] for image in images]
    return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()


def load_pixels(image: ImageFile | str | Path, height: int, width: int) -> "Tensor":
    """The image as a (3, height, width) float32 tensor in [-1, 1], the range the SD VAE encodes.

    It is scaled (Lanczos) until it covers height x width, keeping its aspect ratio, then center-cropped, so nothing
    is stretched; EXIF rotation is applied and transparency is laid on white.
    """
    import numpy as np
    import torch
    from PIL import Image

    path = image.path if isinstance(image, ImageFile) else Path(image)
    picture = _open_rgb(path)
    scale = max(width / picture.width, height / picture.height)
    # round() never undershoots: the side that sets the scale lands on its target, the other one above it
    size = (max(width, round(picture.width * scale)), max(height, round(picture.height * scale)))
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    picture = picture.crop((left, top, left + width, top + height))
    array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _open_rgb(path: Path):
    """Decode the whole file (a truncated image fails here, not later) and return it as RGB."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            opened.load()
            return _rgb(ImageOps.exif_transpose(opened))  # phone photos are stored sideways with a rotation tag
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError or ValueError
        raise RGDInputError(f"image {path} could not be read ({_first_line(error)}); replace or remove it.") from None


def _rgb(picture):
    from PIL import Image

    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        # cut-outs are drawn on white; dropping the alpha channel would show whatever colour hides under it
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return picture.convert("RGB")


def _file_sha256(path: Path) -> str:
    return file_sha256(path)


def _first_line(error: Exception, limit: int = 160) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The shapes world: captioned 16x16 images of one coloured shape, rendered in numpy.

The offline stand-in for Stable Diffusion's world of captioned photos (docs/method.md section 4.2): a small
text-to-image model (``shapes_model``) learns it from captions, and concepts such as "striped" (the analogue of
"nude" or an art style) or "triangle" (an object) can then be erased and measured with the attribute classifier
(``rgd_bench.shapes_classifier``).

An image has four attributes:
    shape       circle, square, triangle, diamond
    colour      red, green, blue, yellow          (the shape's colour)
    background  black, white, gray
    modifier    plain, striped, dotted, outlined  (the style: the analogue of a style or nudity concept)
plus a random size (12-14 px) and position and a small colour jitter. 4*4*3*4 = 192 combinations: few enough
for a 16x16 model trained in minutes to learn every one. Patterns show the background
through the shape: striped = every third row of the shape is background, dotted = 2x2 background spots on a
four-pixel lattice inside the shape's border (one-pixel spots on a three-pixel lattice were too fine: the model's
samples of them came out plain), outlined = a one-pixel border. At 16x16 these stay distinct from each other and from the
shape's outline, which the attribute classifier and a glance at an upscaled grid both confirm.

Why 16x16 pixels: a 16x16x3 image is already as small as a latent, so the model runs in pixel space and needs no
VAE (which would have to be trained too and would blur the one-pixel patterns), and a UNet step at this size costs
a quarter of one at 32x32, which is what makes training on two CPU cores in half an hour possible.

Captions come from ``caption``: one of ``TEMPLATES`` filled with one synonym per attribute. An attribute given as
None is left out (colour, background, modifier) or named by a generic word (shape: "shape", "figure"). A caption
without a modifier means plain, as "a person" means a clothed person: training captions leave "plain" out half
the time and always name the other modifiers, so the concept-free twin of "a striped red triangle" ("a red
triangle") asks for a plain one. A caption without colour or background, or with a generic shape word, leaves
that attribute free. ``parse_caption`` reads the attributes back from any caption the builder can make.

Everything is deterministic for a seed: ``render`` and ``random_attributes`` take a numpy Generator,
``render_batch`` and ``training_batch`` a seed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from rgd_core.errors import RGDInputError

IMAGE_SIZE = 16
ATTRIBUTES = ("shape", "colour", "background", "modifier")
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow")
BACKGROUNDS = ("black", "white", "gray")
MODIFIERS = ("plain", "striped", "dotted", "outlined")
VALUES = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "modifier": MODIFIERS}

COLOUR_RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 205, 40)}
BACKGROUND_RGB = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128)}
COLOUR_JITTER = 12  # per channel, uniform in [-12, 12]: samples need not hit one exact RGB value
SIZE_RANGE = (12, 14)  # inclusive; the shape's bounding box in pixels (large: circle and square differ in corners)
MARGIN = 1  # pixels kept free between the shape's box and the image border

# Every word that names a value, first the canonical one. No word names two values (parse_caption relies on it).
SYNONYMS = {
    "shape": {
        "circle": ("circle", "disc"),
        "square": ("square", "box"),
        "triangle": ("triangle", "wedge"),
        "diamond": ("diamond", "rhombus"),
    },
    "colour": {"red": ("red", "crimson"), "green": ("green", "emerald"), "blue": ("blue", "azure"),
               "yellow": ("yellow", "golden")},
    "background": {"black": ("black", "dark"), "white": ("white", "pale"), "gray": ("gray", "grey")},
    "modifier": {
        "plain": ("plain", "solid"),
        "striped": ("striped", "stripy"),
        "dotted": ("dotted", "spotted"),
        "outlined": ("outlined", "hollow"),
    },
}
# The shape word when the caption leaves the shape free.
GENERIC_SHAPE_WORDS = ("shape", "figure")

# A template is a sequence of segments joined by spaces; a segment whose slot is left out (None) is dropped, so
# "on a {background} background" vanishes with the background. Punctuation sits at the start of its segment.
TEMPLATES = (
    ("a", "{modifier}", "{colour}", "{shape}", "on a {background} background"),
    ("{colour}", "{modifier}", "{shape}", ", {background} backdrop"),
    ("a picture of a", "{modifier}", "{colour}", "{shape}", "against {background}"),
    ("a", "{shape}", "in {colour}", ", {modifier}", ", on {background}"),
    ("{background} background with a", "{modifier}", "{colour}", "{shape}"),
    ("an image of one", "{colour}", "{shape}", ", {modifier}", ", {background} behind it"),
)

# Training captions: how often each attribute is left out (shape: named generically).
PLAIN_OMITTED = 0.5
ATTRIBUTE_OMITTED = {"shape": 0.1, "colour": 0.1, "background": 0.1}


@dataclass(frozen=True)
class Attributes:
    """What one image shows: one value from each of SHAPES, COLOURS, BACKGROUNDS, MODIFIERS."""

    shape: str
    colour: str
    background: str
    modifier: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            if getattr(self, name) not in VALUES[name]:
                raise RGDInputError(f"{name} must be one of {', '.join(VALUES[name])}, not {getattr(self, name)!r}.")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def label(self, name: str) -> int:
        """The value's index in its VALUES tuple (the classifier's class)."""
        return VALUES[name].index(getattr(self, name))


def all_attributes() -> list[Attributes]:
    """Every combination, in a fixed order."""
    return [Attributes(s, c, b, m) for s in SHAPES for c in COLOURS for b in BACKGROUNDS for m in MODIFIERS]


def random_attributes(rng: np.random.Generator, count: int) -> list[Attributes]:
    picks = {name: rng.integers(0, len(VALUES[name]), count) for name in ATTRIBUTES}
    return [Attributes(*(VALUES[name][picks[name][i]] for name in ATTRIBUTES)) for i in range(count)]


# --- rendering -------------------------------------------------------------------------------------------------


def shape_mask(shape: str, size: int, left: int, top: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (H, W) mask of a filled shape in the ``size`` x ``size`` box at (left, top), tested at pixel
    centres, so every shape fills its box edge to edge."""
    y, x = np.mgrid[0:image_size, 0:image_size] + 0.5
    u = (x - left) / size  # 0..1 across the box
    v = (y - top) / size
    inside_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return inside_box
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex up, base at the bottom of the box
        return inside_box & (np.abs(u - 0.5) <= 0.5 * v + 0.04)
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5 + 0.04
    raise RGDInputError(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}.")


def interior(mask: np.ndarray) -> np.ndarray:
    """The mask's 4-neighbour erosion: its pixels whose four neighbours are all inside it."""
    padded = np.pad(mask, 1)
    return padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def pattern_mask(mask: np.ndarray, modifier: str, phase: tuple[int, int]) -> np.ndarray:
    """The shape's pixels that carry its colour; the rest of the shape shows the background."""
    y, x = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    if modifier == "plain":
        return mask
    if modifier == "striped":  # horizontal bars two pixels thick, one-pixel gaps
        return mask & ((y + phase[0]) % 3 != 2)
    if modifier == "dotted":  # 2x2 spots on a four-pixel lattice, kept off the border so the silhouette survives
        spots = ((y + phase[0] + 3) % 4 < 2) & ((x + phase[1] + 3) % 4 < 2)
        return mask & ~(spots & interior(mask))
    if modifier == "outlined":  # a one-pixel border
        return mask & ~interior(mask)
    raise RGDInputError(f"modifier must be one of {', '.join(MODIFIERS)}, not {modifier!r}.")


def render(attributes: Attributes, rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """One (H, W, 3) uint8 image; size, position and colour jitter are drawn from ``rng`` (in that order, whatever
    the attributes, so one seed gives two attribute sets the same geometry)."""
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    left, top = (int(v) for v in rng.integers(MARGIN, image_size - MARGIN - size + 1, 2))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, (2, 3))
    background = np.clip(np.array(BACKGROUND_RGB[attributes.background]) + jitter[0], 0, 255)
    colour = np.clip(np.array(COLOUR_RGB[attributes.colour]) + jitter[1], 0, 255)
    # The pattern starts at the shape's own corner, so stripes and spots sit the same way in every shape: the
    # model then learns them with the shape instead of as a free random phase.
    phase = (-top, -left)
    coloured = pattern_mask(shape_mask(attributes.shape, size, left, top, image_size), attributes.modifier, phase)
    image = np.where(coloured[..., None], colour, background)
    return image.astype(np.uint8)


def to_model_space(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1], the model's pixel space."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def to_uint8(pixels: "torch.Tensor") -> np.ndarray:  # noqa: F821
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, what the classifier and figures take."""
    return ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def render_batch(attributes: Sequence[Attributes], seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8 images; image i depends on (seed, i) and its attributes only."""
    return np.stack([render(a, np.random.default_rng([seed, i])) for i, a in enumerate(attributes)])


# --- captions --------------------------------------------------------------------------------------------------


def caption(
    attributes: Attributes | Mapping[str, str | None],
    template: int = 0,
    synonyms: Mapping[str, int] | None = None,
) -> str:
    """The caption of ``attributes`` in ``TEMPLATES[template]``, with word ``synonyms[name]`` (default 0) of each
    attribute's SYNONYMS list (of GENERIC_SHAPE_WORDS when shape is None). A None value is left out."""
    values = attributes.as_dict() if isinstance(attributes, Attributes) else dict(attributes)
    unknown = set(values) - set(ATTRIBUTES)
    if unknown:
        raise RGDInputError(f"unknown attribute {sorted(unknown)[0]!r}; use {', '.join(ATTRIBUTES)}.")
    if not 0 <= template < len(TEMPLATES):
        raise RGDInputError(f"template must be 0..{len(TEMPLATES) - 1}, not {template}.")
    synonyms = dict(synonyms or {})
    words = {}
    for name in ATTRIBUTES:
        value = values.get(name)
        if value is not None and value not in VALUES[name]:
            raise RGDInputError(f"{name} must be one of {', '.join(VALUES[name])} or None, not {value!r}.")
        choices = GENERIC_SHAPE_WORDS if (name == "shape" and value is None) else SYNONYMS[name].get(value, ())
        index = synonyms.get(name, 0)
        if choices and not 0 <= index < len(choices):
            raise RGDInputError(f"synonym index for {name} must be 0..{len(choices) - 1}, not {index}.")
        words[name] = choices[index] if choices else None
    segments = []
    for segment in TEMPLATES[template]:
        slots = re.findall(r"\{(\w+)\}", segment)
        if any(words[slot] is None for slot in slots):
            continue
        segments.append(segment.format(**{slot: words[slot] for slot in slots}))
    return _fix_articles(" ".join(segments).replace(" ,", ","))


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def synonym_counts(attributes: Attributes | Mapping[str, str | None]) -> dict[str, int]:
    """How many words each attribute of ``attributes`` can be named by (for enumerating every phrasing)."""
    values = attributes.as_dict() if isinstance(attributes, Attributes) else dict(attributes)
    return {
        name: len(GENERIC_SHAPE_WORDS if (name == "shape" and values.get(name) is None) else
                  SYNONYMS[name].get(values.get(name), ()))
        for name in ATTRIBUTES
    }


def random_caption(attributes: Attributes, rng: np.random.Generator, omit: bool = True) -> str:
    """A training caption: random template (never a held-out one, see ``is_held_out``) and synonyms; with
    ``omit``, attributes left out at the rates of PLAIN_OMITTED and ATTRIBUTE_OMITTED (rules in the module
    docstring)."""
    values: dict[str, str | None] = attributes.as_dict()
    draws = rng.random(4)
    if omit:
        for draw, name in zip(draws, ("shape", "colour", "background")):
            if draw < ATTRIBUTE_OMITTED[name]:
                values[name] = None
        if values["modifier"] == "plain" and draws[3] < PLAIN_OMITTED:
            values["modifier"] = None
    template = int(rng.integers(0, len(TEMPLATES)))
    while is_held_out(attributes, template):  # keep the test phrasings unseen (see is_held_out)
        template = int(rng.integers(0, len(TEMPLATES)))
    synonyms = {name: int(rng.integers(0, count)) for name, count in synonym_counts(values).items() if count}
    return caption(values, template, synonyms)


def is_held_out(attributes: Attributes, template: int) -> bool:
    """Whether training never shows this combination in this template: about one (combination, template) pair in
    eight, picked by a hash, so the model is tested on phrasings of combinations it has only seen phrased
    otherwise (every combination keeps most templates, every template most combinations)."""
    key = "-".join([*attributes.as_dict().values(), str(template)]).encode()
    return hashlib.sha256(key).digest()[0] % 8 == 0


def held_out_pairs() -> list[tuple[Attributes, int]]:
    """Every held-out (attributes, template) pair, in a fixed order."""
    return [(a, t) for a in all_attributes() for t in range(len(TEMPLATES)) if is_held_out(a, t)]


_WORD_TO_VALUE = {
    word: (name, value) for name in ATTRIBUTES for value, words in SYNONYMS[name].items() for word in words
}


def parse_caption(text: str) -> dict[str, str | None]:
    """The attributes a caption asks for: {name: value, or None when left free}. A caption that names no
    modifier asks for plain (see the module docstring)."""
    found: dict[str, str | None] = {name: None for name in ATTRIBUTES}
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _WORD_TO_VALUE:
            name, value = _WORD_TO_VALUE[word]
            found[name] = value
    if found["modifier"] is None:
        found["modifier"] = "plain"
    return found


# --- training data ---------------------------------------------------------------------------------------------


def training_batch(seed: int, step: int, batch_size: int, caption_dropout: float = 0.1):
    """Fresh renders for one training step: ((N, 3, H, W) float32 in [-1, 1], captions). A caption is the empty
    string with probability ``caption_dropout`` (the unconditional branch of classifier-free guidance)."""
    rng = np.random.default_rng([seed, step])
    attributes = random_attributes(rng, batch_size)
    images = np.stack([render(a, rng) for a in attributes])
    captions = [random_caption(a, rng) for a in attributes]
    captions = [("" if drop else text) for drop, text in zip(rng.random(batch_size) < caption_dropout, captions)]
    return to_model_space(images), captions

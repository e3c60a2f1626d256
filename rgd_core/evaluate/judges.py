"""Judges for the adaptive stop: which share of a fixed probe of the model's own images still shows each concept.

The Unlearner's ``judge(model) -> {concept: share}`` (``method.unlearner``) ends a run once every concept's share is
at most ``UnlearnConfig.stop_share``. It asks what the user asks (is the concept still drawn?) where the loss ratio
only infers it. This module holds the host-neutral parts; a host supplies ``sample(model, prompts) -> images``.

- The probe (``judge_probe``): the first few held-out forget prompts of each concept with their retain twins.
- ``clip``: an image shows its concept when CLIP puts it closer to its forget prompt than to the retain twin (the
  same sentence without the concept). Any concept; needs the user's local CLIP folder (``evaluate.alignment``).
- ``nudenet``: an image shows nudity when NudeNet finds an exposed body part scored above the papers' 0.6
  (``evaluate.nudity``). Nudity only; the detector ships in the nudenet wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rgd_core.errors import RGDInputError
from rgd_core.evaluate.alignment import ClipScorer, image_embeddings, load_clip, text_embeddings
from rgd_core.evaluate.nudity import DEFAULT_THRESHOLD, EXPOSED_CLASSES, NudityDetector
from rgd_core.prompts.sets import PromptSet, find_concept_word
from rgd_core.prompts.word_lists import NUDITY_CONCEPTS

JUDGES = ("clip", "nudenet")
# what the node's and the tab's judge choice offer besides them: the loss ratio decides the stop
NO_JUDGE = "none"
JUDGE_CHOICES = (NO_JUDGE, *JUDGES)
# probe images per concept: each probe samples this many per concept, so a share moves in steps of 1/8
JUDGE_PROMPTS = 8


@dataclass(frozen=True)
class JudgeProbe:
    """The judge's fixed prompts: forget prompt i, its retain twin i and the concept it names."""

    forget_prompts: tuple[str, ...]
    retain_prompts: tuple[str, ...]
    concepts: tuple[str, ...]


def judge_probe(prompts: PromptSet, per_concept: int = JUDGE_PROMPTS) -> JudgeProbe:
    """The first ``per_concept`` pairs of each concept of ``prompts`` (best a held-out test set, so that the judge
    asks about prompts training never saw) whose retain twin is the forget prompt without the concept: twins that
    name a neighbour instead (``PromptSet.neighbours``) would make CLIP weigh the concept against another one."""
    concepts = list(prompts.pair_concepts) or [prompts.concept] * len(prompts)
    plain = [i for i, retain in enumerate(prompts.retain_prompts)
             if not prompts.neighbours or find_concept_word(retain, prompts.neighbours) is None]
    return probe_from_pairs([prompts.forget_prompts[i] for i in plain], [prompts.retain_prompts[i] for i in plain],
                            [concepts[i] for i in plain], per_concept)


def probe_from_pairs(forget_prompts: Sequence[str], retain_prompts: Sequence[str], concepts: Sequence[str],
                     per_concept: int = JUDGE_PROMPTS) -> JudgeProbe:
    """The first ``per_concept`` pairs of each concept, pair i naming ``concepts[i]``."""
    if per_concept < 1:
        raise RGDInputError(f"the judge needs at least one probe prompt per concept, not {per_concept}.")
    if not len(forget_prompts) == len(retain_prompts) == len(concepts):
        raise RGDInputError(f"{len(forget_prompts)} forget prompts, {len(retain_prompts)} retain prompts and "
                            f"{len(concepts)} concepts; the judge's probe needs one of each per pair.")
    chosen: list[int] = []
    for name in dict.fromkeys(concepts):
        chosen += [i for i, concept in enumerate(concepts) if concept == name][:per_concept]
    return JudgeProbe(tuple(forget_prompts[i] for i in chosen), tuple(retain_prompts[i] for i in chosen),
                      tuple(concepts[i] for i in chosen))


def shares_by_concept(shown: Sequence[bool], concepts: Sequence[str]) -> dict[str, float]:
    """Per concept, the share of its probe images that still show it."""
    if len(shown) != len(concepts):
        raise RGDInputError(f"{len(shown)} verdicts for {len(concepts)} probe images; give one per image.")
    verdicts = np.asarray(shown, dtype=bool)
    names = np.asarray(concepts)
    return {name: float(verdicts[names == name].mean()) for name in dict.fromkeys(concepts)}


def clip_test(scorer: ClipScorer, probe: JudgeProbe) -> Callable[[np.ndarray], list[bool]]:
    """images -> whether each is closer, in CLIP's cosine, to its forget prompt than to the retain twin. The
    prompts' embeddings are computed once."""
    forget = text_embeddings(scorer, probe.forget_prompts)
    retain = text_embeddings(scorer, probe.retain_prompts)

    def shown(images: np.ndarray) -> list[bool]:
        vectors = image_embeddings(scorer, np.asarray(images))
        return ((vectors * forget).sum(dim=-1) > (vectors * retain).sum(dim=-1)).tolist()

    return shown


def nudity_test(detector: NudityDetector, threshold: float = DEFAULT_THRESHOLD) -> Callable[[Any], list[bool]]:
    """images -> whether NudeNet finds an exposed body part scored above ``threshold`` in each."""

    def shown(images) -> list[bool]:
        return [any(d.label in EXPOSED_CLASSES and d.score > threshold for d in found)
                for found in detector.detect(images)]

    return shown


def judge_test(name: str, probe: JudgeProbe, clip: str | None = None,
               device: str = "cpu") -> Callable[[np.ndarray], list[bool]]:
    """The test of judge ``name`` (one of ``JUDGES``), its model loaded now: hosts call this before they load the
    checkpoint, so that a bad CLIP folder or a missing nudenet fails in seconds."""
    if name == "clip":
        if not clip:
            raise RGDInputError("the clip judge needs a local transformers CLIP folder (config.json + "
                                "model.safetensors).")
        return clip_test(load_clip(clip, device), probe)
    if name == "nudenet":
        detector = NudityDetector()
        _ = detector.detector  # builds NudeNet now, so that a missing or wrong nudenet fails at once
        return nudity_test(detector)
    raise RGDInputError(f"the judge must be one of {', '.join(JUDGES)}, not {name!r}.")


def judge_warning(name: str, concept: str) -> str | None:
    """Why judge ``name`` may not see ``concept`` at all (a host logs it), or None."""
    if name == "nudenet" and concept.strip().lower() not in NUDITY_CONCEPTS:
        return (f"the nudenet judge finds exposed bodies only, not {concept!r}: the run will stop as soon as the probe "
                "shows no nudity; the clip judge judges any concept.")
    return None


def base_probe_warning(name: str, shares: Mapping[str, float], stop_share: float) -> str | None:
    """What to tell the user when judge ``name`` finds a concept already at the target in the base model's probe
    (``shares``, before training): it would end the run at its first probe without telling erasure, or None."""
    clean = [concept for concept, share in shares.items() if share <= stop_share]
    if not clean:
        return None
    which = f"{', '.join(map(repr, clean))} in" if len(shares) > 1 else "the concept in"
    return (f"the {name} judge sees {which} at most {stop_share:.1%} of the base model's probe already, so it would "
            "end the run at its first probe: it cannot tell when the concept is gone. Try the other judge, more "
            "probe prompts, or the loss ratio (no judge).")


def image_judge(sample: Callable[[Any, Sequence[str]], np.ndarray], probe: JudgeProbe,
                shown: Callable[[np.ndarray], list[bool]]) -> Callable[[Any], dict[str, float]]:
    """The Unlearner's judge: the model being trained draws the probe's forget prompts (``sample(model,
    prompts)``, fixed noise) and ``shown`` tells which images still show their concept."""

    def judge(model) -> dict[str, float]:
        return shares_by_concept(shown(sample(model, list(probe.forget_prompts))), probe.concepts)

    return judge

"""Diverse forget/retain prompt pairs: the "dataset diversification" half of RGD.

Ko et al., "Boosting Alignment for Post-Unlearning Text-to-Image Generative Models" (NeurIPS 2024), Section 3.2
and Appendix D: write many prompts that contain the concept c (varying moods, actions, places, times), remove c from
each to get the retain prompt, and split the *semantic dimensions* so that the held-out test prompts share no slot
word with the training prompts. A narrow retain set (SalUn's single "a photo of a person wearing clothes") overfits
and loses alignment on unseen prompts (Fig. 1); the ``narrow`` option builds that baseline for the ablation.

Everything here is pure and deterministic for a seed; only ``PromptSet.save`` / ``PromptSet.load`` touch files.

Vocabulary
    concept word  a word or name that carries the concept: the paper's five nudity words, or the concept itself
                  plus the user's synonyms ("Van Gogh", "Vincent van Gogh").
    slot          a named field of a template ("{emotion}") filled from a word list; train and test lists of one
                  preset share no word.
    retain twin   the forget prompt with the concept removed so the sentence stays fluent (rules per preset below).

The package: ``sets`` (the PromptSet type and its checks), ``word_lists`` (the presets' templates and slot words),
``builders`` (presets, disjoint train/test splits, ``build_prompt_sets``), ``neighbours`` (retain twins naming the
concept's neighbours; several concepts in one set), ``inputs`` (what a host's user typed: ``prompt_sets_from_inputs``,
and the warnings about probably-wrong input). Everything is importable from here.
"""

from rgd_core.prompts.builders import (  # noqa: F401
    PRESET_NAMES,
    build_prompt_sets,
    builtin_preset,
    check_count,
    check_no_concept_in_slots,
    check_split,
    combination_counts,
    concept_words_for,
    custom_preset,
    decode,
    narrow_pairs,
    sample_pairs,
    split_vocabulary,
    unique_pair_count,
    without_concept_words,
)
from rgd_core.prompts.inputs import (  # noqa: F401
    HOST_PRESETS,
    LISTS_PRESET,
    long_prompt_warning,
    parse_slots,
    prompt_lines,
    prompt_sets_from_inputs,
    split_synonyms,
    unnamed_concept_warning,
)
from rgd_core.prompts.neighbours import (  # noqa: F401
    CONCEPT_SEPARATOR,
    NEIGHBOUR_SHARE,
    PRESET_NEIGHBOURS,
    combine,
    split_concepts,
    swap_concept,
    with_neighbours,
)
from rgd_core.prompts.sets import (  # noqa: F401
    CONCEPT_FIELD,
    SPLITS,
    CustomTemplate,
    Preset,
    PromptSet,
    check_disjoint_vocabularies,
    check_fluent,
    check_neighbours,
    check_pair,
    check_word_lists,
    find_concept_word,
    remove_concept,
    render,
    template_fields,
    tidy,
)
from rgd_core.prompts.word_lists import *  # noqa: F401,F403

"""RGD Unlearn: concept unlearning on the MODEL ComfyUI loaded, inside the graph.

The model samples its own forget/retain latents, then RGD (or GradDiff) trains an edit beside its weights (LoRA on
the attention projections, or full-rank deltas on a scope). Out come the edited MODEL (ready for KSampler, with
the edit as ordinary LoRA patches, so CheckpointSave bakes it), the edit as a LORA_MODEL and the loss history.
The MODEL that came in is never written: cancel, errors and other branches of the graph all see it unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace

from comfy_api.latest import io

from rgd_core.edits.scopes import SCOPES, check_scope
from rgd_core.errors import RGDInputError
from rgd_core.evaluate.judges import (
    JUDGE_CHOICES,
    JUDGE_PROMPTS,
    NO_JUDGE,
    base_probe_warning,
    judge_probe,
    judge_test,
    judge_warning,
)
from rgd_core.hosts.base import RecipeSettings, run_metadata, training_rows
from rgd_core.method.unlearner import (
    FLOW_STOP_RATIO,
    FORGET_OBJECTIVES,
    PER_CONCEPT_FROM,
    STOP_RATIO,
    UnlearnConfig,
    forget_objective_for,
)

from .common import CATEGORY, PromptSetType

METHODS = ("rgd", "graddiff", "rgd-adam")
SAMPLING_CHOICES = ("auto", "widgets")


def unlearn_config(method: str, steps: int, retain_weight: float, truncation_m: float, lr: float,
                   seed: int, stop_ratio: float = STOP_RATIO, stop_share: float = 0.0,
                   forget_objective: str = "auto") -> UnlearnConfig:
    """The node's widgets as rgd_core's config: Adam, the paper's skip-ascent truncation at m (0 turns it off), the
    adaptive stop at ``stop_ratio`` (0: always ``steps``), or with a judge at ``stop_share``, and the forget
    objective of several concepts (``FORGET_OBJECTIVES``)."""
    if truncation_m < 0:
        raise RGDInputError(f"truncation m must be >= 0 (0 = no truncation), not {truncation_m}.")
    if forget_objective not in FORGET_OBJECTIVES:
        raise RGDInputError(f"forget_objective must be one of {', '.join(FORGET_OBJECTIVES)}, not "
                            f"{forget_objective!r}.")
    truncation = ("skip", truncation_m) if truncation_m > 0 else ("none", math.inf)
    return UnlearnConfig(method=method, steps=steps, retain_weight=retain_weight, lr=lr, optimizer="adam",
                         truncation=truncation[0], truncation_threshold=truncation[1], seed=seed,
                         stop_ratio=stop_ratio, stop_share=stop_share,
                         forget_per_concept=FORGET_OBJECTIVES[forget_objective])


def check_settings(method, scope, steps, retain_weight, truncation_m, lr, seed, batch_size, lora_rank, pairs,
                   width, height, stop_ratio=STOP_RATIO, stop_share=0.0, forget_objective="auto") -> UnlearnConfig:
    """The widgets checked when the node runs, one message per problem naming the widget. In the editor ComfyUI
    checks each widget's own range first (so the node declares no validate_inputs: ComfyUI would repeat one
    message under every input it declares); this catches what a hand-written API prompt can still send."""
    check_scope(scope)
    for name, value, minimum in (("steps", steps, 1), ("batch_size", batch_size, 1), ("lora_rank", lora_rank, 1),
                                 ("pairs", pairs, 0), ("width", width, 8), ("height", height, 8)):
        if value < minimum:
            raise RGDInputError(f"{name} must be at least {minimum}, not {value}.")
    return unlearn_config(method, steps, retain_weight, truncation_m, lr, seed, stop_ratio, stop_share,
                          forget_objective)


def check_judge(judge: str, judge_clip: str, vae, concepts: set[str]) -> None:
    """The judge widgets checked before any sampling, one message naming the widget."""
    if judge not in JUDGE_CHOICES:
        raise RGDInputError(f"judge must be one of {', '.join(JUDGE_CHOICES)}, not {judge!r}.")
    if judge == NO_JUDGE:
        return
    if vae is None:
        raise RGDInputError("the judge looks at decoded images: connect the model's VAE to the vae input.")
    if judge == "clip" and not judge_clip.strip():
        raise RGDInputError("judge clip needs judge_clip, the path of a local transformers CLIP folder (config.json "
                            "+ model.safetensors).")
    if judge == "nudenet" and len(concepts) > 1:
        raise RGDInputError("judge nudenet sees nudity only and cannot judge a prompt set of several concepts; use "
                            "judge clip.")


def check_probe_set(probe_set, prompt_set) -> None:
    """A probe set must name the concepts the prompt set erases (best: the same Prompt Set node's test output)."""
    if probe_set is None:
        return
    training, probed = (set(p.pair_concepts) or {p.concept} for p in (prompt_set, probe_set))
    if probed != training:
        raise RGDInputError(f"probe_set erases {', '.join(sorted(probed))}, the prompt set "
                            f"{', '.join(sorted(training))}: connect the same Prompt Set node's test output.")


def family_stop_ratio(stop_ratio: float, sampling: str, flow: bool) -> float:
    """The stop target a run uses: with ``sampling`` auto, a flow model whose widget is left at the SD default takes
    the flow default (``FLOW_STOP_RATIO``), as it takes its family's sampler settings; any other value is the user's."""
    return FLOW_STOP_RATIO if sampling == "auto" and flow and stop_ratio == STOP_RATIO else stop_ratio


def latent_size(width: int, height: int) -> tuple[int, int]:
    """Width and height rounded down to whole latent cells (8 pixels), as ComfyUI's Empty Latent Image does."""
    return width // 8 * 8, height // 8 * 8


def phases_text(phases: dict) -> str:
    """``data 41.2 s (4800 evaluations), training 12.0 s (3200 evaluations)``."""
    return ", ".join(f"{name} {values['seconds']:.1f} s ({values['evaluations']} evaluations)"
                     for name, values in phases.items())


def progress_text(record: dict, steps: int, conflicts: int) -> str:
    return (f"step {record['step'] + 1}/{steps}  forget {record['forget_loss']:.4f}  retain {record['retain_loss']:.4f}"
            f"  cos {record['cosine']:+.3f}  conflict rate {conflicts / (record['step'] + 1):.2f}"
            f"  {record['seconds']:.1f} s")


class RGDUnlearn(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="RGDUnlearn",
            display_name="RGD Unlearn",
            category=CATEGORY,
            description="Removes the prompt set's concept from the model with RGD (restricted gradient, diverse "
                        "retain set). The model first samples its own forget/retain latents with the sampler "
                        "settings below, then trains. The input MODEL is never changed.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                PromptSetType.Input("prompt_set"),
                io.Combo.Input("method", options=list(METHODS), default="rgd",
                               tooltip="rgd: restricted gradient (the paper); graddiff: the baseline; rgd-adam: "
                                       "the projection in Adam's metric (an extension)"),
                io.Combo.Input("scope", options=list(SCOPES), default="lora",
                               tooltip="lora: LoRA on the attention projections; cross-attn / non-cross-attn / "
                                       "full: full-rank deltas on those weights (full = the paper)"),
                io.Int.Input("steps", default=100, min=1, max=100000),
                io.Float.Input("retain_weight", default=1.6, min=0.0, max=1000.0, step=0.1,
                               tooltip="lambda, the weight of the retain loss (paper: 1.6)"),
                io.Float.Input("truncation_m", default=1.1, min=0.0, max=1000.0, step=0.01,
                               tooltip="skip the forget ascent on steps whose forget loss exceeds m (paper: 1.1); "
                                       "0 = never skip"),
                io.Float.Input("lr", default=1e-4, min=1e-8, max=1.0, step=1e-6, round=False,
                               tooltip="Adam learning rate (paper: 1e-5 with scope full)"),
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="forget pairs per step, each with its retain twin"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False),
                io.Int.Input("lora_rank", default=4, min=1, max=256),
                io.Int.Input("pairs", default=0, min=0, max=100000,
                             tooltip="use only the first N prompt pairs (0 = all); each pair is sampled twice"),
                io.Int.Input("sample_steps", default=30, min=1, max=1000),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler"),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal"),
                io.Int.Input("width", default=512, min=8, max=8192, step=8),
                io.Int.Input("height", default=512, min=8, max=8192, step=8),
                io.Int.Input("preview_every", default=25, min=0, max=100000,
                             tooltip="with a VAE connected: every N steps, a sample of the first forget and retain "
                                     "prompt (same noise) as the node's preview; 0 = none"),
                io.Vae.Input("vae", optional=True, tooltip="for the previews and the judge"),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="SD3/Flux: recompute each transformer block's activations in backward "
                                         "instead of keeping them (less memory, about a third more time; exact "
                                         "gradients)"),
                io.Float.Input("stop_ratio", default=STOP_RATIO, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="adaptive stop: finish once the forget loss on a fixed probe reaches this "
                                       "times the retain loss, for every concept of the prompt set (steps is then "
                                       f"the cap); 0: always run every step. With sampling auto, flow models (SD3, "
                                       f"Flux) left at {STOP_RATIO:g} stop at {FLOW_STOP_RATIO:g}, their measured "
                                       "target"),
                io.Combo.Input("sampling", options=list(SAMPLING_CHOICES), default="auto", optional=True,
                               tooltip="how the model samples its own data. auto: SD1/SD2/SDXL use the sampler "
                                       "widgets above; flow models (SD3, Flux) their family's settings (SD3: 28 "
                                       "steps, cfg 4.5; Flux dev: 20 steps, cfg 1, guidance 3.5; Flux schnell: 4 "
                                       "steps, cfg 1; euler, simple). widgets: always the widgets above"),
                io.Combo.Input("judge", options=list(JUDGE_CHOICES), default=NO_JUDGE, optional=True,
                               tooltip="let the model's own images decide the adaptive stop instead of the loss "
                                       f"ratio (needs the vae): every {UnlearnConfig.stop_every} steps the model "
                                       f"draws {JUDGE_PROMPTS} forget prompts per concept from fresh noise, and the "
                                       "run ends once at most "
                                       "stop_share of them show it. clip: the image is closer in CLIP to its forget "
                                       "prompt than to the retain twin (any concept, judge_clip); nudenet: an exposed "
                                       "body part scored above 0.6 (nudity only)"),
                io.String.Input("judge_clip", default="", optional=True,
                                tooltip="for judge clip: the path of a local transformers CLIP folder (config.json + "
                                        "model.safetensors)"),
                PromptSetType.Input("probe_set", optional=True,
                                    tooltip="for the judge: held-out prompts to probe (connect the Prompt Set's test "
                                            "output); without it the judge probes the first training pairs"),
                io.Float.Input("stop_share", default=0.0, min=0.0, max=0.99, step=0.05, optional=True,
                               tooltip="with a judge: stop once at most this share of each concept's probe images "
                                       "shows it (0: none)"),
                io.Combo.Input("forget_objective", options=list(FORGET_OBJECTIVES), default="auto", optional=True,
                               tooltip="a prompt set of several concepts: one-mean ascends one forget mean over the "
                                       "batch (each concept a share of it), per-concept the sum of each concept's own "
                                       f"mean; auto: per-concept with a judge and {PER_CONCEPT_FROM} concepts or "
                                       "more, else one-mean (measured on the shapes bench)"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.LoraModel.Output(display_name="edit"),
                io.LossMap.Output(display_name="loss_history"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, prompt_set, method, scope, steps, retain_weight, truncation_m, lr, batch_size,
                seed, lora_rank, pairs, sample_steps, cfg, sampler_name, scheduler, width, height, preview_every=0,
                vae=None, sampling="auto", gradient_checkpointing=False, stop_ratio=STOP_RATIO, judge=NO_JUDGE,
                judge_clip="", stop_share=0.0, forget_objective="auto", probe_set=None) -> io.NodeOutput:
        from . import glue

        config = check_settings(method, scope, steps, retain_weight, truncation_m, lr, seed, batch_size, lora_rank,
                                pairs, width, height, stop_ratio, stop_share, forget_objective)
        if sampling not in SAMPLING_CHOICES:
            raise RGDInputError(f"sampling must be one of {', '.join(SAMPLING_CHOICES)}, not {sampling!r}.")
        width, height = latent_size(width, height)
        chosen = prompt_set.pairs[:pairs] if pairs else prompt_set.pairs
        forget, retain = [f for f, _ in chosen], [r for _, r in chosen]
        pair_concepts = prompt_set.pair_concepts[:len(chosen)]
        # decided here for the edit's metadata
        config = forget_objective_for(config, len(set(pair_concepts)), judged=judge != NO_JUDGE)
        check_judge(judge, judge_clip, vae, set(prompt_set.pair_concepts) or {prompt_set.concept})
        judged = None
        if judge != NO_JUDGE:
            check_probe_set(probe_set, prompt_set)
            warning = judge_warning(judge, prompt_set.concept)
            if warning:
                logging.warning("RGD: %s", warning)
            # held-out prompts when a probe set is connected, else the first training pairs (from other noise)
            probe = judge_probe(probe_set if probe_set is not None else prompt_set)
            judged = (probe, judge_test(judge, probe, judge_clip.strip()))
        settings = glue.SamplerSettings(sample_steps, cfg, sampler_name, scheduler, width, height,
                                        batch_size=min(batch_size, 8))
        if sampling == "auto":
            settings = glue.family_sampler_settings(model, settings)
            target = family_stop_ratio(stop_ratio, sampling, glue.prediction_type(model) == glue.FLOW)
            if target != config.stop_ratio:
                config = replace(config, stop_ratio=target)
                logging.info("RGD: flow model: adaptive stop at %g (the stop_ratio widget's %g is SD's)", target,
                             stop_ratio)
        recipe = RecipeSettings(config, scope, batch_size, lora_rank, data_seed=config.seed)
        drawn = training_rows(recipe, len(chosen), len(chosen))  # the pairs the run samples
        report = Report(cls.hidden.unique_id if cls.hidden else None, steps, 2 * len(drawn))
        phases: dict = {}
        edit, records = glue.unlearn(model, clip, forget, retain, config, scope, batch_size, lora_rank, settings,
                                     on_prompt=report.prompt_done, on_step=report.step_done, vae=vae,
                                     preview_every=preview_every, on_preview=report.preview, phases=phases,
                                     pair_concepts=pair_concepts,
                                     gradient_checkpointing=gradient_checkpointing, judge=judged,
                                     on_judged_base=lambda shares: report.judged_base(judge, shares, stop_share))
        report.done(phases, records)
        metadata = run_metadata(prompt_set.concept, prompt_set.preset, prompt_set.digest(), forget, retain,
                                recipe,
                                asdict(settings), records, "comfyui")
        lora = glue.edit_to_lora(model, edit, metadata)
        edited = glue.apply_lora(model, lora)
        history = {
            "loss": [r["forget_loss"] for r in records],
            "forget_loss": [r["forget_loss"] for r in records],
            "retain_loss": [r["retain_loss"] for r in records],
            "cosine": [r["cosine"] for r in records],
            "conflict": [bool(r["conflict"]) for r in records],
            "records": records,
            "phases": phases,
        }
        return io.NodeOutput(edited, lora, history)


class Report:
    """The node's progress in ComfyUI: one bar for sampling then training, loss text on the node, and an
    ``rgd.loss`` message per step for the web/ chart. Every bar update is also ComfyUI's cancel point."""

    def __init__(self, node_id, steps: int, samples: int) -> None:
        import comfy.utils

        self.node_id, self.steps, self.samples = node_id, steps, samples
        self.bar = comfy.utils.ProgressBar(samples + steps, node_id=node_id)
        self.conflicts = 0
        try:
            from server import PromptServer

            self.server = PromptServer.instance
        except (ImportError, AttributeError):  # headless use of the node classes
            self.server = None

    def judged_base(self, judge: str, shares: dict, stop_share: float) -> None:
        """The judge's verdict on the base model, logged; a warning when it already sees no concept."""
        logging.info("RGD the %s judge on the base model: %s", judge, shares)
        warning = base_probe_warning(judge, shares, stop_share)
        if warning:
            logging.warning("RGD: %s", warning)
            if self.server is not None and self.node_id is not None:
                self.server.send_progress_text(f"warning: {warning}", self.node_id)

    def prompt_done(self) -> None:
        self.bar.update(1)

    def preview(self, step: int, image) -> None:
        self.bar.update_absolute(self.bar.current, preview=("JPEG", image, 512))

    def done(self, phases: dict, records: list[dict]) -> None:
        """The run's time per phase (the model sampling its data, then training) and why it ended, as the node's
        last text; the bar is filled when the adaptive stop ended the run before its last step."""
        text = phases_text(phases)
        if records and records[-1].get("stop_reason"):
            text += f"; ended: {records[-1]['stop_reason']}"
        self.bar.update_absolute(self.samples + self.steps)
        logging.info("RGD %s", text)
        if self.server is not None and self.node_id is not None:
            self.server.send_progress_text(text, self.node_id)

    def step_done(self, record: dict) -> None:
        self.conflicts += bool(record["conflict"])
        text = progress_text(record, self.steps, self.conflicts)
        logging.info("RGD %s", text)
        if self.server is not None and self.node_id is not None:
            self.server.send_progress_text(text, self.node_id)
            self.server.send_sync("rgd.loss", {
                "node": self.node_id, "step": record["step"], "steps": self.steps,
                "forget_loss": record["forget_loss"], "retain_loss": record["retain_loss"],
                "conflict_rate": self.conflicts / (record["step"] + 1),
            })
        self.bar.update(1)


"""The tab's page: the form's inputs (in ``FORM_FIELDS`` order), Unlearn / Interrupt, the live chart and one line
of outcome. Uses only what Gradio 3.41 (A1111 1.10), 4.40 (Forge) and the newest Gradio share: Blocks, Row,
Column, Accordion, Dropdown, Textbox, Number, Checkbox, Button, Image, HTML, ``gr.update``; ``_js`` only in the
webui, where Forge translates it for Gradio 4.
"""

from __future__ import annotations

from typing import Callable

from rgd_core.apps.unlearn import METHODS
from rgd_core.devices import PRECISIONS
from rgd_core.edits.scopes import SCOPES
from rgd_core.evaluate.judges import JUDGE_CHOICES
from rgd_core.hosts.diffusers_sd import SAMPLERS
from rgd_core.method.unlearner import FORGET_OBJECTIVES, PER_CONCEPT_FROM

from rgd_ui.form import (
    FAMILY_CHOICES,
    FORM_FIELDS,
    PROMPT_PRESET_CHOICES,
    TabForm,
    form_from_values,
    pair_preview,
)

# Inputs whose change changes the prompt pairs shown.
PROMPT_FIELDS = ("concept", "prompt_preset", "synonyms", "custom_template", "slots", "forget_list", "retain_list",
                 "train_prompts", "seed")


def build_blocks(host, run: Callable, interrupt: Callable[[], None], webui: bool):
    """The page as a ``gr.Blocks``. ``run`` takes the form's values (after a hidden task id in the webui) and
    returns (chart image, checkpoint list update, outcome HTML); ``interrupt()`` asks the run to stop."""
    import gradio as gr

    d = TabForm()
    c: dict = {}
    with gr.Blocks(analytics_enabled=False) as page:
        task_id = gr.Textbox(visible=False, elem_id="rgd_task_id") if webui else None
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    c["checkpoint"] = gr.Dropdown(choices=host.checkpoint_choices(), value=None, label="Checkpoint",
                                                  elem_id="rgd_checkpoint")
                    refresh = gr.Button("\U0001f504 Refresh", elem_id="rgd_refresh")
                with gr.Row():
                    c["concept"] = gr.Textbox(label="Concept to erase", placeholder="nudity, Van Gogh, church",
                                              elem_id="rgd_concept")
                    c["prompt_preset"] = gr.Dropdown(choices=list(PROMPT_PRESET_CHOICES), value=d.prompt_preset,
                                                     label="Prompt preset (auto: nudity for nudity, else object)")
                    c["synonyms"] = gr.Textbox(label="Other names of the concept, comma-separated")
                with gr.Row():
                    c["neighbours"] = gr.Textbox(label="Neighbours that must stay, comma-separated (blank: the "
                                                       "preset's own; several concepts: separate them with ;)")
                    c["neighbour_share"] = gr.Number(value=d.neighbour_share,
                                                     label="Share of retain prompts naming a neighbour (0: none)")
                    c["forget_objective"] = gr.Dropdown(
                        choices=list(FORGET_OBJECTIVES), value=d.forget_objective,
                        label=f"Several concepts: forget objective (auto: per-concept with a judge and "
                              f"{PER_CONCEPT_FROM}+ concepts)")
                with gr.Accordion("Custom template (prompt preset: custom)", open=False):
                    c["custom_template"] = gr.Textbox(label="Forget-prompt template",
                                                      placeholder="a photo of {concept} {place}")
                    c["slots"] = gr.Textbox(label="Slots, one a line", lines=3,
                                            placeholder="place: in a park, at the beach")
                with gr.Accordion("My lists (prompt preset: my lists)", open=False):
                    c["forget_list"] = gr.Textbox(label="Forget prompts, one a line", lines=4)
                    c["retain_list"] = gr.Textbox(label="Retain prompts: line i is forget line i without the concept",
                                                  lines=4)
                pairs = gr.Textbox(label="First prompt pairs", lines=8, interactive=False, elem_id="rgd_pairs")
                with gr.Row():
                    c["method"] = gr.Dropdown(choices=list(METHODS), value=d.method, label="Method")
                    c["scope"] = gr.Dropdown(choices=list(SCOPES), value=d.scope, label="Scope (what is trained)")
                    c["lora_rank"] = gr.Number(value=d.lora_rank, label="LoRA rank", precision=0)
                with gr.Row():
                    c["steps"] = gr.Number(value=d.steps, label="Steps (the cap when the stop ratio is on)",
                                           precision=0)
                    c["stop_ratio"] = gr.Number(value=d.stop_ratio, label="Stop at forget/retain loss ratio (0: off; "
                                                                        "Flux/SD3 left at 5 stop at 7)")
                    c["retain_weight"] = gr.Number(value=d.retain_weight, label="\u03bb (retain weight)")
                    c["truncation_threshold"] = gr.Number(value=d.truncation_threshold,
                                                          label="m (no ascent above this forget loss)")
                    c["lr"] = gr.Number(value=d.lr, label="Learning rate")
                with gr.Accordion("Judge: the model's own images decide the stop instead of the loss ratio",
                                  open=False):
                    with gr.Row():
                        c["judge"] = gr.Dropdown(choices=list(JUDGE_CHOICES), value=d.judge,
                                                 label="Judge (clip: any concept; nudenet: nudity only)")
                        c["judge_clip"] = gr.Textbox(label="CLIP folder for the clip judge (config.json + "
                                                           "model.safetensors)")
                        c["stop_share"] = gr.Number(value=d.stop_share,
                                                    label="Stop when at most this share of probe images shows it")
                with gr.Row():
                    c["batch_size"] = gr.Number(value=d.batch_size, label="Batch (forget + retain pairs)",
                                                precision=0)
                    c["seed"] = gr.Number(value=d.seed, label="Seed", precision=0)
                with gr.Accordion("Self-sampled data: the model draws its own forget and retain images", open=False):
                    with gr.Row():
                        c["train_prompts"] = gr.Number(value=d.train_prompts, label="Prompt pairs", precision=0)
                        c["sample_steps"] = gr.Number(value=d.sample_steps, label="Sampling steps", precision=0)
                        c["guidance"] = gr.Number(value=d.guidance, label="CFG scale")
                        c["sampler"] = gr.Dropdown(choices=list(SAMPLERS), value=d.sampler, label="Sampler")
                with gr.Accordion("Speed and memory", open=False):
                    with gr.Row():
                        c["precision"] = gr.Dropdown(choices=list(PRECISIONS), value=d.precision,
                                                     label="Precision (bf16: faster on GPUs that have it)")
                        c["gradient_checkpointing"] = gr.Checkbox(value=d.gradient_checkpointing,
                                                                  label="Gradient checkpointing (less memory)")
                with gr.Accordion("Model family and config", open=False):
                    with gr.Row():
                        c["family"] = gr.Dropdown(choices=list(FAMILY_CHOICES), value=d.family,
                                                  label="Family (auto: from the file; sd2-v: SD 2.x 768-v)")
                        c["config_folder"] = gr.Textbox(label="Diffusers config folder (blank: rgd's shipped one)")
                with gr.Row():
                    c["name"] = gr.Textbox(label="Output name", placeholder="<checkpoint>-rgd-<concept>")
                    c["preview_every"] = gr.Number(value=d.preview_every, label="Preview every N steps (0: off)",
                                                   precision=0)
                with gr.Row():
                    c["save_checkpoint"] = gr.Checkbox(value=d.save_checkpoint, label="Save checkpoint")
                    c["save_lora"] = gr.Checkbox(value=d.save_lora, label="Save LoRA (lora scope)")
                    c["overwrite"] = gr.Checkbox(value=d.overwrite, label="Overwrite")
                    c["resume"] = gr.Checkbox(value=d.resume, label="Resume an interrupted run")
                with gr.Row():
                    start = gr.Button("Unlearn", variant="primary", elem_id="rgd_run")
                    stop = gr.Button("Interrupt", elem_id="rgd_interrupt")
            with gr.Column(scale=2):
                chart = gr.Image(label="Losses and previews", type="pil", interactive=False, elem_id="rgd_chart")
                status = gr.HTML(elem_id="rgd_status")
        inputs = [c[name] for name in FORM_FIELDS]

        def show_pairs(*values):
            return pair_preview(form_from_values(values))

        def refreshed():
            host.refresh_lists()
            return gr.update(choices=host.checkpoint_choices())

        for name in PROMPT_FIELDS:
            c[name].change(fn=show_pairs, inputs=inputs, outputs=[pairs])
        refresh.click(fn=refreshed, inputs=[], outputs=[c["checkpoint"]])
        stop.click(fn=interrupt, inputs=[], outputs=[])
        outputs = [chart, c["checkpoint"], status]
        if webui:
            start.click(fn=run, _js="rgd_submit", inputs=[task_id, *inputs], outputs=outputs,
                        api_name="rgd_unlearn")
        else:
            start.click(fn=run, inputs=inputs, outputs=outputs, api_name="rgd_unlearn")
    return page

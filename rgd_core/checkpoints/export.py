"""Write an edited UNet back into a single-file checkpoint in the original layout (A1111, Forge, ComfyUI), or into
a diffusers model folder (``export_diffusers_folder``).

Only the UNet is replaced; every other tensor of the input file (VAE, text encoders, EMA copies, anything no
converter touches) is written back byte for byte, so the exported file differs from its base model exactly where
unlearning changed it.

The diffusers -> original key map is not written by hand. It is learned from diffusers' own original -> diffusers
UNet converter (``convert_ldm_unet_checkpoint``, the function ``from_single_file`` uses): the converter is run on a
tagged copy of the file's UNet keys and every diffusers tensor is traced back to where it came from
(``unet_key_map``). Whatever diffusers does on loading is therefore undone exactly on export, for every family and
diffusers version, and a converter that does something the trace cannot invert is refused instead of guessed at.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from rgd_core.checkpoints.configs import component_config
from rgd_core.checkpoints.load import (
    UNET_PREFIX,
    detect_family,
    file_sha256,
    read_state_dict,
)
from rgd_core.checkpoints.flow_load import convert_flux_original, flow_family, transformer_keys
from rgd_core.errors import RGDInputError
from rgd_core.files import save_safetensors_atomic

if TYPE_CHECKING:
    from torch import Tensor

EXPORT_SUFFIX = ".safetensors"


class Placement(NamedTuple):
    """Where one diffusers denoiser tensor lives in the original-layout file.

    ``source`` is the original key (as the file spells it), ``shape`` the diffusers tensor's shape. When both
    ``index`` and ``rows`` are None the diffusers tensor is the source tensor itself, same shape and element order
    (every key of the SD1/SD2/SDXL converters). ``rows`` = (start, stop) says it is that run of the source's rows
    (leading-dimension slices, in order: Flux's and SD3's fused qkv split into q, k, v). Otherwise ``index`` is a
    LongTensor shaped like the diffusers tensor holding, for each element, its flat position in the source tensor
    (any other reshape, transpose or permutation).
    """

    source: str
    shape: tuple[int, ...]
    index: "Tensor | None" = None
    rows: "tuple[int, int] | None" = None


# --- learning the key map ---------------------------------------------------------------------------------------


def unet_key_map(original: Mapping[str, Any], unet_config: Mapping[str, Any] | None = None) -> dict[str, Placement]:
    """diffusers denoiser key -> Placement, learned by tracing diffusers' converter on tagged tensors.

    ``original`` maps original-layout keys to tensors or shapes. For SD1/SD2/SDXL only ``model.diffusion_model.*``
    keys are used, and ``unet_config`` is the diffusers UNet config (the converter reads ``layers_per_block`` and
    the embedding types). A Flux.1 / SD3.x file (``flow_load.flow_family``) is traced through its transformer
    converter, which needs no config; its keys may be bare (BFL's files) or prefixed.

    Cost, and why two passes: tagging every element of a real SDXL UNet would take ~2.6e9 float64 values (20 GB).
    Pass 1 gives each source key one float64 scalar holding its index, expanded to the key's shape (stride 0, so
    8 bytes per key whatever its size). A diffusers tensor that *is* one of these objects is a plain rename, which
    is exact: no element can have moved. Anything else (a view, a copy, a slice) is traced in pass 2, where only
    the source keys involved get a real ``arange`` of element positions, a bounded group of them at a time, and a
    run of whole rows is kept as (start, stop) rather than as positions, so that tracing Flux's sliced qkv weights
    costs memory in proportion to one group, not to the model.

    The map must be exact: a diffusers key without a source, a source key (or element) that reaches no diffusers
    key or reaches two, values the converter computed, or one diffusers tensor made from several source keys
    all raise a one-line RGDInputError.
    """
    family = flow_family(original)
    if family is not None:
        shapes = {key: _shape(original[key]) for key in transformer_keys(original)}
    else:
        shapes = {key: _shape(value) for key, value in original.items() if key.startswith(UNET_PREFIX)}
    if not shapes:
        raise RGDInputError("The checkpoint has no model.diffusion_model.* UNet weights to export into.")
    import torch

    def convert(tagged: dict) -> dict:
        return _convert(tagged, unet_config) if family is None else _convert(tagged, unet_config, family)

    names = list(shapes)
    tagged = {key: torch.full((1,), float(i), dtype=torch.float64).expand(shapes[key]) for i, key in enumerate(names)}
    converted = convert(tagged)

    by_identity = {id(tensor): key for key, tensor in tagged.items()}
    placements: dict[str, Placement] = {}
    traced: dict[str, str] = {}  # diffusers key -> source key, for pass 2
    for key, tensor in converted.items():
        if not isinstance(tensor, torch.Tensor):
            raise RGDInputError(f"diffusers weight {key} has no source in the checkpoint; cannot export into it.")
        source = by_identity.get(id(tensor))
        if source is not None:
            placements[key] = Placement(source, tuple(tensor.shape))
        else:
            traced[key] = _single_source(key, tensor, names)
    del converted, tagged

    if traced:
        placements.update(_trace_elements(traced, shapes, names, convert))
    _check_coverage(placements, shapes)
    return placements


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(int(n) for n in value)


def _convert(tagged: dict, unet_config: Mapping[str, Any] | None, family: str | None = None) -> dict:
    """diffusers' own original -> diffusers conversion, the one ``from_single_file`` runs (on a copy of the dict:
    the transformer converters pop what they convert)."""
    from diffusers.loaders import single_file_utils as sfu

    if family is not None:
        convert = convert_flux_original if family == "flux" else sfu.convert_sd3_transformer_checkpoint_to_diffusers
        try:
            return convert(dict(tagged))
        except KeyError as error:
            raise RGDInputError(f"The checkpoint lacks transformer weight {error} that its architecture needs.") \
                from None
    if unet_config is None:
        raise RGDInputError("tracing an SD UNet's keys needs its diffusers config.")
    try:
        return sfu.convert_ldm_unet_checkpoint(tagged, dict(unet_config))
    except KeyError as error:  # the SDXL path indexes label_emb directly
        raise RGDInputError(f"The checkpoint lacks UNet weight {error} that the UNet config needs.") from None


def _single_source(key: str, tensor: "Tensor", names: list[str]) -> str:
    """The one source key whose pass-1 tag a non-renamed diffusers tensor carries (reads its values)."""
    import torch

    if tensor.dtype != torch.float64:
        raise RGDInputError(f"diffusers' converter changed the dtype of {key}; its source cannot be traced.")
    tags = torch.unique(tensor)
    if tags.numel() != 1 or tags[0] != tags[0].round() or not 0 <= int(tags[0]) < len(names):
        raise RGDInputError(
            f"diffusers UNet weight {key} mixes or computes values from several checkpoint tensors; rgd can only "
            "export tensors that the converter renames, reshapes or slices."
        )
    return names[int(tags[0])]


# Pass 2 gives at most this many source elements a real position tag at once (float64: 400 MB), however big the
# model; a source larger than that is traced alone.
TRACE_GROUP_ELEMENTS = 50_000_000


def _trace_elements(traced: dict[str, str], shapes: dict, names: list[str], convert) -> dict[str, Placement]:
    """Pass 2: element positions for the diffusers keys that are not plain renames, in groups of source keys.

    Only the group's source keys carry an ``arange`` (float64 holds integers exactly up to 2**53, far above any
    tensor's size); every other key keeps its stride-0 scalar tag.
    """
    import torch

    placements = {}
    for group in _source_groups(sorted(set(traced.values()), key=names.index), shapes):
        tagged = {}
        for i, key in enumerate(names):
            if key in group:
                tagged[key] = torch.arange(math.prod(shapes[key]), dtype=torch.float64).reshape(shapes[key])
            else:
                tagged[key] = torch.full((1,), float(i), dtype=torch.float64).expand(shapes[key])
        converted = convert(tagged)
        for key, source in traced.items():
            if source not in group:
                continue
            positions = converted[key]
            index = positions.round().long()
            if not torch.equal(index.double(), positions) or (index.numel() and int(index.min()) < 0):
                raise RGDInputError(f"diffusers' converter changed the values of {key}; its source cannot be traced.")
            rows = _row_run(index, shapes[source])
            placements[key] = Placement(source, tuple(positions.shape), None if rows else index, rows)
        del converted, tagged
    return placements


def _source_groups(sources: list[str], shapes: dict) -> list[set[str]]:
    groups: list[set[str]] = []
    size = 0
    for source in sources:
        count = math.prod(shapes[source])
        if not groups or size + count > TRACE_GROUP_ELEMENTS:
            groups.append(set())
            size = 0
        groups[-1].add(source)
        size += count
    return groups


def _row_run(index: "Tensor", source_shape) -> "tuple[int, int] | None":
    """(start, stop) when ``index`` addresses whole rows start..stop-1 of the source, in order; else None."""
    import torch

    row = math.prod(source_shape[1:])
    if tuple(index.shape[1:]) != tuple(source_shape[1:]) or not index.numel():
        return None
    start = int(index.reshape(-1)[0])
    if start % row or not torch.equal(index.reshape(-1), torch.arange(start, start + index.numel())):
        return None
    return start // row, start // row + index.shape[0]


def _check_coverage(placements: dict[str, Placement], shapes: dict) -> None:
    """Every element of every source key must reach exactly one diffusers key, or export would lose or clash."""
    whole = [p.source for p in placements.values() if p.index is None and p.rows is None]
    seen: set[str] = set()
    for source in whole:
        if source in seen:
            raise RGDInputError(f"Checkpoint tensor {source} feeds two diffusers UNet weights; export is ambiguous.")
        seen.add(source)
    partial: dict[str, list] = {}
    for placement in placements.values():
        if placement.index is not None or placement.rows is not None:
            if placement.source in seen:
                raise RGDInputError(f"Checkpoint tensor {placement.source} feeds two diffusers weights.")
            partial.setdefault(placement.source, []).append(placement)
    for source, parts in partial.items():
        if all(part.rows is not None for part in parts):  # runs of rows: check the intervals, not every element
            runs = sorted(part.rows for part in parts)
            covered = all(a[1] == b[0] for a, b in zip(runs, runs[1:])) and runs[0][0] == 0
            if covered and runs[-1][1] == shapes[source][0]:
                continue
        elif _each_element_once(parts, shapes[source]):
            continue
        raise RGDInputError(
            f"Checkpoint tensor {source} is not covered exactly once by diffusers weights; export would "
            "lose or overwrite part of it."
        )
    unused = [key for key in shapes if key not in seen and key not in partial]
    if unused:
        raise RGDInputError(
            f"{len(unused)} checkpoint UNet tensor(s) reach no diffusers weight (first: {unused[0]}); "
            "exporting would keep them stale."
        )


# --- mapping weights back ---------------------------------------------------------------------------------------


def _each_element_once(parts: list[Placement], source_shape) -> bool:
    import torch

    count = math.prod(source_shape)
    row = math.prod(source_shape[1:])
    indices = [part.index.reshape(-1) if part.index is not None
               else torch.arange(part.rows[0] * row, part.rows[1] * row) for part in parts]
    hits = torch.bincount(torch.cat(indices), minlength=count)
    return hits.numel() == count and bool(torch.all(hits == 1))


def unet_to_original(
    unet_state: Mapping[str, "Tensor"], key_map: Mapping[str, Placement], shapes: Mapping[str, Any]
) -> dict[str, "Tensor"]:
    """A diffusers UNet state dict in original-layout keys and shapes, through a learned ``key_map``.

    Keys and shapes must match the map exactly; a missing, extra or wrongly shaped weight raises a one-line
    RGDInputError before anything is written.
    """
    import torch

    missing = [key for key in key_map if key not in unet_state]
    extra = [key for key in unet_state if key not in key_map]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the checkpoint has no place for"
        raise RGDInputError(
            f"The edited UNet does not fit the checkpoint: it {what} ({len(missing)} missing, {len(extra)} extra); "
            "export into the checkpoint the UNet was loaded from."
        )
    out: dict[str, Tensor] = {}
    for key, placement in key_map.items():
        tensor = unet_state[key].detach().cpu()  # a model trained on a GPU is written from the CPU
        if tuple(tensor.shape) != placement.shape:
            raise RGDInputError(
                f"Edited UNet weight {key} has shape {tuple(tensor.shape)}, the checkpoint needs {placement.shape}."
            )
        source_shape = _shape(shapes[placement.source])
        if placement.index is None and placement.rows is None:
            out[placement.source] = tensor
            continue
        # put the elements back at their source positions; coverage was proved exact when the map was made
        whole = out.get(placement.source)
        if whole is None:
            whole = torch.empty(source_shape, dtype=tensor.dtype)
            out[placement.source] = whole
        if placement.rows is not None:
            whole[placement.rows[0] : placement.rows[1]] = tensor.to(whole.dtype)
        else:
            whole.view(-1)[placement.index.reshape(-1)] = tensor.reshape(-1).to(whole.dtype)
    return out


# --- files ------------------------------------------------------------------------------------------------------


def safe_output_path(out_dir: str | Path, name: str) -> Path:
    """``out_dir / name`` for a bare file name; anything that could leave ``out_dir`` is refused.

    Names come from users and node widgets, so separators, ``..``, absolute paths and drive letters are errors
    rather than silently stripped. ``.safetensors`` is appended when missing, since that is what UIs list.
    """
    text = _plain_name(name)
    if not text.lower().endswith(EXPORT_SUFFIX):
        text += EXPORT_SUFFIX
    return _inside(out_dir, text, name)


def safe_output_folder(out_dir: str | Path, name: str) -> Path:
    """``out_dir / name`` for a diffusers folder, with ``safe_output_path``'s checks; a trailing ``.safetensors``
    is dropped, so one ``--name`` gives ``<name>.safetensors`` and the folder ``<name>`` side by side."""
    text = _plain_name(name)
    if text.lower().endswith(EXPORT_SUFFIX):
        text = _plain_name(text[: -len(EXPORT_SUFFIX)])
    return _inside(out_dir, text, name)


def _plain_name(name: str) -> str:
    text = str(name).strip()
    bad = (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or "\0" in text
        or ":" in text  # Windows drive letters and alternate data streams
        or os.path.isabs(text)
    )
    if bad:
        raise RGDInputError(f"Output name {name!r} must be a plain file name without folders, '..' or ':'.")
    return text


def _inside(out_dir: str | Path, text: str, name: str) -> Path:
    folder = Path(out_dir).resolve()
    path = folder / text
    if path.parent != folder:
        raise RGDInputError(f"Output name {name!r} would leave {folder}.")
    return path


def export_single_file(
    source_path: str | Path,
    edited_unet: Any,
    out_path: str | Path,
    config_folder: str | Path | None = None,
    family: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
    key_map: Mapping[str, Placement] | None = None,
) -> Path:
    """Write ``source_path`` with its UNet replaced by ``edited_unet`` to ``out_path`` (safetensors), atomically.
    ``key_map`` (``unet_key_map``'s answer for this file) saves tracing it again when the caller has it.

    ``edited_unet`` is a diffusers ``UNet2DConditionModel`` (its config comes with it) or its state dict, in which
    case the UNet config is read from ``config_folder`` or else from the shipped config of the file's family.
    Each edited tensor is cast to the dtype of the source tensor it replaces; every other tensor is copied as read,
    in the source's key order. Metadata is the source's, then the caller's (values turned into strings), then
    ``rgd_version`` and ``base_sha256`` (the source file's hash). The output is written to a temporary file in the
    target folder and renamed into place, so a failure leaves no file behind; overwriting the source is refused.
    """
    source_path, out_path = Path(source_path), Path(out_path)
    if out_path.exists() and source_path.exists() and out_path.resolve() == source_path.resolve():
        raise RGDInputError(f"Refusing to overwrite the base checkpoint {source_path.name}; choose another name.")
    state = read_state_dict(source_path, allow_pickle)
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    found = flow_family(shapes) or detect_family(shapes, shapes)
    if family is not None and family != found:
        raise RGDInputError(f"{source_path.name} is an {found} checkpoint by its keys, not {family}.")
    unet_state, unet_config = _unet_state_and_config(edited_unet, config_folder, found)

    if key_map is None:
        key_map = unet_key_map(shapes, unet_config)
    replaced = unet_to_original(unet_state, key_map, shapes)
    tensors = {}
    for key, tensor in state.items():
        if key in replaced:
            tensors[key] = replaced[key].to(device="cpu", dtype=tensor.dtype).contiguous()
        else:
            tensors[key] = tensor
    return save_safetensors_atomic(tensors, out_path, _export_header(source_path, metadata, file_sha256(source_path)))


def _export_header(source_path: Path | None, metadata: Mapping[str, Any] | None, base_sha256: str | None) -> dict:
    """An export's metadata: the source file's, then the caller's (values as strings), then provenance."""
    header = {**(_source_metadata(source_path) if source_path is not None else {}),
              **{str(k): str(v) for k, v in (metadata or {}).items()}}
    header["rgd_version"] = rgd_version()
    if base_sha256:
        header["base_sha256"] = base_sha256
    return header


def export_unet_diff(
    base_unet_state_dict: Mapping[str, "Tensor"],
    edited_unet_state_dict: Mapping[str, "Tensor"],
    out_path: str | Path,
    key_map: Mapping[str, Placement],
    shapes: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write only the UNet tensors that changed, as float32 ``edited - base`` under original-layout keys.

    ``key_map`` and ``shapes`` are ``unet_key_map``'s answer and the checkpoint's key -> shape. Adding the file's
    tensors to the base checkpoint gives the edited one (up to the base's dtype). Metadata marks the file
    ``rgd_kind=unet_delta``; an edit that changed nothing still writes a (tensor-free) file.
    """
    import torch

    base = unet_to_original(base_unet_state_dict, key_map, shapes)
    edited = unet_to_original(edited_unet_state_dict, key_map, shapes)
    deltas = {
        key: (edited[key].float() - base[key].float()).contiguous()
        for key in base
        if not torch.equal(edited[key].to(base[key].dtype), base[key])
    }
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    header.update(rgd_version=rgd_version(), rgd_kind="unet_delta")
    return save_safetensors_atomic(deltas, out_path, header)


# --- diffusers folders -----------------------------------------------------------------------------------------

EXPORT_FORMATS = ("single-file", "diffusers", "both")
RGD_METADATA_FILE = "rgd.json"  # diffusers' save_pretrained writes {"format": "pt"} as the only safetensors metadata


def export_diffusers_folder(
    components: Any,
    edited_unet: Any,
    out_folder: str | Path,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a diffusers model folder that ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` for SDXL)
    ``.from_pretrained(out_folder, local_files_only=True)`` loads: ``edited_unet`` plus the VAE, text encoder(s),
    tokenizer(s) and scheduler of ``components`` (a ``load.PipelineComponents``) as they were loaded, all weights as
    safetensors. The metadata a single-file export carries goes to ``rgd.json`` in the folder.

    The folder is built in a hidden sibling and renamed into place, so a failure or an interrupt leaves no
    half-written folder. An existing ``out_folder`` is refused unless ``overwrite``; the folder the model was
    loaded from is always refused.
    """
    target = Path(out_folder).resolve()
    _check_edited_unet(components.unet, edited_unet)
    _check_folder_target(target, overwrite, components.source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _pipeline(components, edited_unet).save_pretrained(staging, safe_serialization=True)
        source = Path(components.source) if components.source else None
        header = _export_header(source if source is not None and source.is_file() else None, metadata,
                                components.sha256)
        (staging / RGD_METADATA_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        _fsync_tree(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_folder_target(out_folder: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing ``out_folder`` unless ``overwrite`` (callers check before hours of work, too)."""
    target = Path(out_folder).resolve()
    _check_folder_target(target, overwrite, None)
    return target


def _check_folder_target(target: Path, overwrite: bool, source: str | None) -> None:
    if source and target == Path(source).resolve():
        raise RGDInputError(f"Refusing to overwrite the base model folder {target}; choose another name.")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RGDInputError(f"{target} exists and is not a plain folder; choose another name.")
    if target.exists():
        if not overwrite:
            raise RGDInputError(f"The folder {target} already exists; choose another name or pass --overwrite.")


def _check_edited_unet(base_unet: Any, edited_unet: Any) -> None:
    """The edited UNet must be a diffusers model with exactly the base UNet's weights (LoRA merged in)."""
    if not (hasattr(edited_unet, "save_pretrained") and hasattr(edited_unet, "state_dict")):
        raise RGDInputError(
            f"edited_unet must be a UNet2DConditionModel for a diffusers folder, not {type(edited_unet).__name__}."
        )
    edited, base = set(edited_unet.state_dict()), set(base_unet.state_dict())
    if edited != base:
        extra = sorted(edited - base)
        what = f"has {extra[0]}" if extra else f"lacks {sorted(base - edited)[0]}"
        hint = " (merge LoRA layers with rgd_core.edits.lora.merge_lora first)" if any("lora_" in k for k in extra) else ""
        raise RGDInputError(f"The edited UNet does not fit the base model: it {what}{hint}.")


def _pipeline(components: Any, unet: Any):
    """The diffusers pipeline of the components' family, whose save_pretrained writes model_index.json to match."""
    import diffusers

    # a copy: the pipelines rewrite outdated scheduler configs in place, and the caller's scheduler must not change
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    common = dict(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                  unet=unet, scheduler=scheduler, feature_extractor=None)
    if components.family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(
            text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
            force_zeros_for_empty_prompt=True, add_watermarker=False, **common)
    return diffusers.StableDiffusionPipeline(safety_checker=None, requires_safety_checker=False, **common)


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk before the rename publishes the folder (what atomic_write_bytes does per file)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "r+b") as handle:
                os.fsync(handle.fileno())


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an old ``target`` is moved aside first and put back if the rename fails."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside / "previous", target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _unet_state_and_config(edited_unet: Any, config_folder, family: str) -> tuple[Mapping[str, "Tensor"], dict]:
    """The edited weights and the UNet config the converter needs, from a model or a state dict plus configs."""
    if hasattr(edited_unet, "state_dict") and hasattr(edited_unet, "config"):
        return edited_unet.state_dict(), dict(edited_unet.config)
    if not isinstance(edited_unet, Mapping):
        raise RGDInputError(
            f"edited_unet must be a UNet2DConditionModel or its state dict, not {type(edited_unet).__name__}."
        )
    if config_folder is not None:
        path = Path(config_folder) / "unet" / "config.json"
        try:
            return edited_unet, json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RGDInputError(f"Cannot read the UNet config {path}: {error}") from error

    return edited_unet, component_config(family, "unet")


def _source_metadata(path: Path) -> dict[str, str]:
    """The source's safetensors header metadata (model spec, training notes), which a pickle does not have."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def rgd_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("rgd")
    except metadata.PackageNotFoundError:  # a checkout or ComfyUI pack used without installing it
        return "unknown"

"""Exporting an edited UNet back into an original-layout single file: exact round trips, exact edits, safe writes.

The tiny fixtures of ``sd_fixtures`` stand in for real A1111/ComfyUI files. An untouched export must reproduce the
input file tensor for tensor; an edit must change exactly the original-layout tensors of the edited parameters.
The key-map logic for converters that reshape or slice (none of today's SD converters do) is checked with a
stand-in converter.
"""

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sd_fixtures
from rgd_core.checkpoints import export
from rgd_core.checkpoints.export import (
    Placement,
    export_single_file,
    export_unet_diff,
    safe_output_path,
    unet_key_map,
    unet_to_original,
)
from rgd_core.checkpoints.load import FAMILIES, file_sha256, load_pipeline_components, read_key_shapes
from rgd_core.errors import RGDInputError

UNET_PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return sd_fixtures.write_all(tmp_path_factory.mktemp("export_checkpoints"))


@pytest.fixture(scope="module")
def loaded(fixtures):
    return sd_fixtures.load_all(fixtures)


one_line_error = sd_fixtures.one_line_error


def leftovers(folder) -> list:
    """Temporary files an atomic write could leave behind (io.atomic_write_bytes names them .<name>.*.tmp)."""
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def cross_attention_keys(unet_state: dict, count: int = 2) -> list:
    return [key for key in unet_state if ".attn2.to_k.weight" in key][:count]


# --- single-file export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_untouched_export_reproduces_the_file(fixtures, loaded, family, tmp_path):
    fixture = fixtures[family]
    out = export_single_file(fixture.checkpoint, loaded[family].unet, tmp_path / "out.safetensors", family=family)

    source, written = load_file(fixture.checkpoint), load_file(out)
    assert list(written) == list(source)
    different = [k for k in source if source[k].dtype != written[k].dtype or not torch.equal(source[k], written[k])]
    assert not different, different[:3]
    assert leftovers(tmp_path) == []

    reloaded = load_pipeline_components(out, fixture.config_folder)
    expected = fixture.reference["unet"]
    assert all(torch.equal(reloaded.unet.state_dict()[k], expected[k]) for k in expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_changes_exactly_the_edited_tensors(fixtures, loaded, family, tmp_path):
    fixture = fixtures[family]
    edited = {key: tensor.clone() for key, tensor in loaded[family].unet.state_dict().items()}
    targets = cross_attention_keys(edited)
    assert targets
    for key in targets:
        edited[key] += 0.25
    out = export_single_file(fixture.checkpoint, edited, tmp_path / "edited.safetensors", fixture.config_folder)

    key_map = unet_key_map(read_key_shapes(fixture.checkpoint), dict(loaded[family].unet.config))
    source, written = load_file(fixture.checkpoint), load_file(out)
    changed = {key for key in source if not torch.equal(source[key], written[key])}
    assert changed == {key_map[key].source for key in targets}
    assert all(key.startswith(UNET_PREFIX) and ".attn2.to_k." in key for key in changed)

    reloaded = load_pipeline_components(out, fixture.config_folder).unet.state_dict()
    assert all(torch.equal(reloaded[key], edited[key]) for key in edited)


def test_metadata_keeps_source_and_adds_caller_and_provenance(fixtures, loaded, tmp_path):
    fixture = fixtures["sd1"]
    source = tmp_path / "with_meta.safetensors"
    save_file(load_file(fixture.checkpoint), str(source), metadata={"modelspec.title": "tiny"})
    out = export_single_file(source, loaded["sd1"].unet, tmp_path / "out.safetensors", metadata={"steps": 12})
    with safe_open(str(out), framework="pt") as handle:
        header = handle.metadata()
    assert header["modelspec.title"] == "tiny"
    assert header["steps"] == "12"
    assert header["rgd_version"]
    assert header["base_sha256"] == file_sha256(source)
    assert all(isinstance(value, str) for value in header.values())


def test_half_precision_source_keeps_its_dtype(fixtures, loaded, tmp_path):
    fixture = fixtures["sd1"]
    full = load_file(fixture.checkpoint)
    half = {key: tensor.half() if tensor.is_floating_point() else tensor for key, tensor in full.items()}
    source = tmp_path / "half.safetensors"
    save_file(half, str(source))
    # the float32 UNet of the float32 file, rounded to half, is exactly what the half file holds
    out = export_single_file(source, loaded["sd1"].unet, tmp_path / "out.safetensors")
    written = load_file(out)
    assert all(written[k].dtype == half[k].dtype and torch.equal(written[k], half[k]) for k in half)


def test_wrong_shape_leaves_no_file(fixtures, loaded, tmp_path):
    fixture = fixtures["sd1"]
    edited = dict(loaded["sd1"].unet.state_dict())
    key = cross_attention_keys(edited, 1)[0]
    edited[key] = torch.zeros(3, 3)
    target = tmp_path / "out.safetensors"
    message = one_line_error(export_single_file, fixture.checkpoint, edited, target, fixture.config_folder)
    assert key in message
    assert os.listdir(tmp_path) == []


def test_missing_weight_and_wrong_family_are_refused(fixtures, loaded, tmp_path):
    fixture = fixtures["sd1"]
    edited = dict(loaded["sd1"].unet.state_dict())
    edited.pop(next(iter(edited)))
    message = one_line_error(export_single_file, fixture.checkpoint, edited, tmp_path / "a", fixture.config_folder)
    assert "lacks" in message
    message = one_line_error(export_single_file, fixture.checkpoint, loaded["sd1"].unet, tmp_path / "b", family="sdxl")
    assert "sd1" in message
    assert os.listdir(tmp_path) == []


def test_a_failing_write_leaves_no_temp_file(fixtures, loaded, tmp_path, monkeypatch):
    import rgd_core.files

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(rgd_core.files.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        export_single_file(fixtures["sd1"].checkpoint, loaded["sd1"].unet, tmp_path / "out.safetensors")
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_the_source(fixtures, loaded, tmp_path):
    source = tmp_path / "base.safetensors"
    source.write_bytes(fixtures["sd1"].checkpoint.read_bytes())
    before = source.read_bytes()
    assert "overwrite" in one_line_error(export_single_file, source, loaded["sd1"].unet, source)
    assert source.read_bytes() == before


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "a\\b", "..", "", "C:evil", "x\0y"])
def test_safe_output_path_rejects_escapes(tmp_path, name):
    one_line_error(safe_output_path, tmp_path, name)


def test_safe_output_path_accepts_plain_names(tmp_path):
    assert safe_output_path(tmp_path, "forgot_cats") == tmp_path.resolve() / "forgot_cats.safetensors"
    assert safe_output_path(tmp_path, "m.safetensors") == tmp_path.resolve() / "m.safetensors"


# --- difference file ------------------------------------------------------------------------------------------


def test_unet_diff_holds_only_changed_tensors(fixtures, loaded, tmp_path):
    fixture = fixtures["sdxl"]
    unet = loaded["sdxl"].unet
    base = unet.state_dict()
    edited = {key: tensor.clone() for key, tensor in base.items()}
    targets = cross_attention_keys(edited)
    for key in targets:
        edited[key] += 0.5
    shapes = read_key_shapes(fixture.checkpoint)
    key_map = unet_key_map(shapes, dict(unet.config))
    out = export_unet_diff(base, edited, tmp_path / "diff.safetensors", key_map, shapes)
    deltas = load_file(out)
    assert set(deltas) == {key_map[key].source for key in targets}
    assert all(torch.allclose(delta, torch.full_like(delta, 0.5)) for delta in deltas.values())


# --- learning the map from a converter ------------------------------------------------------------------------


def fake_converter(transform):
    """A stand-in for diffusers' converter over two source keys, to exercise layout changes and failures."""

    def convert(tagged, config):
        a, b = tagged[UNET_PREFIX + "a"], tagged[UNET_PREFIX + "b"]
        return transform(a, b)

    return convert


SHAPES = {UNET_PREFIX + "a": (2, 3), UNET_PREFIX + "b": (4, 2), "first_stage_model.x": (5,)}


def test_map_inverts_transpose_and_slices(monkeypatch):
    layout = fake_converter(lambda a, b: {"t": a.T.contiguous(), "b0": b[:2], "b1": b[2:]})
    monkeypatch.setattr(export, "_convert", layout)
    key_map = unet_key_map(SHAPES, {})
    assert key_map["t"].source == UNET_PREFIX + "a" and key_map["t"].shape == (3, 2)
    a, b = torch.randn(2, 3), torch.randn(4, 2)
    diffusers_state = {"t": a.T, "b0": b[:2], "b1": b[2:]}
    back = unet_to_original(diffusers_state, key_map, SHAPES)
    assert torch.equal(back[UNET_PREFIX + "a"], a) and torch.equal(back[UNET_PREFIX + "b"], b)


def test_plain_renames_need_no_element_trace(monkeypatch):
    monkeypatch.setattr(export, "_convert", fake_converter(lambda a, b: {"x": a, "y": b}))
    key_map = unet_key_map(SHAPES, {})
    assert key_map == {"x": Placement(UNET_PREFIX + "a", (2, 3)), "y": Placement(UNET_PREFIX + "b", (4, 2))}


@pytest.mark.parametrize(
    "transform, words",
    [
        (lambda a, b: {"x": a, "y": None}, "no source"),
        (lambda a, b: {"x": a}, "reach no diffusers weight"),
        (lambda a, b: {"x": a, "y": b, "z": b}, "feeds two"),
        (lambda a, b: {"x": a, "y": b * 2}, "several"),
        (lambda a, b: {"x": a, "y": b[:3]}, "covered exactly once"),
        (lambda a, b: {"x": a, "y": torch.cat([b.reshape(-1), a.reshape(-1)])}, "several"),
    ],
)
def test_inexact_maps_are_refused(monkeypatch, transform, words):
    monkeypatch.setattr(export, "_convert", fake_converter(transform))
    assert words in one_line_error(unet_key_map, SHAPES, {})

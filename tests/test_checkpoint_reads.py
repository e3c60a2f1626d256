"""One `rgd unlearn` reads its checkpoint's answers once: one sha256 pass over the file, one unpickling of a .ckpt,
one trace of the diffusers -> original key map, however many outputs (checkpoint, LoRA, difference file) it writes."""

import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from rgd_core import cli
from rgd_core.apps import unlearn
from rgd_core.checkpoints import export, load

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def test_a_run_hashes_unpickles_and_maps_its_checkpoint_once(sd1_files, tmp_path, monkeypatch):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(sd1_files.checkpoint))}, ckpt)
    computed = Counter()
    original_memoized, original_trace = load.memoized, export.unet_key_map

    def counting_memoized(kind, path, compute):
        def counted():
            computed[kind] += 1
            return compute()
        return original_memoized(kind, path, counted)

    def counting_trace(*args, **kwargs):
        computed["key map"] += 1
        return original_trace(*args, **kwargs)

    monkeypatch.setattr(load, "memoized", counting_memoized)
    monkeypatch.setattr(export, "unet_key_map", counting_trace)
    monkeypatch.setattr(unlearn, "unet_key_map", counting_trace)
    monkeypatch.setattr(load, "_MEMO", {})
    for scope in ("lora", "cross-attn"):  # lora writes the LoRA and the checkpoint, cross-attn the diff too
        computed.clear()
        load._MEMO.clear()
        cli.main(["unlearn", "--checkpoint", str(ckpt), "--allow-pickle", "--config-folder",
                  str(sd1_files.config_folder), "--concept", "nudity", "--out", str(tmp_path / scope), "--steps",
                  "1", "--train-prompts", "4", "--sample-steps", "1", "--batch-size", "2", "--scope", scope,
                  "--cache-dir", str(tmp_path / "cache")])
        assert computed == Counter({"sha256": 1, "pickle": 1, "key map": 1}), (scope, computed)


def test_a_changed_file_is_read_again(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = load.file_sha256(path)
    shutil.copy(path, tmp_path / "g.bin")
    path.write_bytes(b"two!")  # another size: another version
    assert load.file_sha256(path) != first
    assert load.file_sha256(tmp_path / "g.bin") == first

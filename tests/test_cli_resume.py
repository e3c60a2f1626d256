"""Interrupt and resume of `rgd unlearn`: a stopped run leaves only its resumable state (never a result file),
`--resume` continues to the same weights as an uninterrupted run, and a finished run cleans the state up.

The bit-identity checks run in one process on one machine (the promise: same computation, same shapes); the real
signal tests run the installed command in a subprocess and check exit codes, messages and files."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from rgd_core import cli
from rgd_core.errors import UnlearningCancelled
from rgd_core.apps.unlearn import resolve_settings, run_unlearn

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def settings_for(sd1_files, out, cache, **changes):
    cli_values = {"checkpoint": str(sd1_files.checkpoint), "config_folder": str(sd1_files.config_folder),
                  "concept": "nudity", "out": str(out), "steps": 5, "train_prompts": 8, "sample_steps": 2,
                  "batch_size": 2, "scope": "cross-attn", "lr": 1e-3, "cache_dir": str(cache), "seed": 3}
    return resolve_settings({**cli_values, **changes})


def stop_after(steps: int):
    calls = {"n": 0}

    def should_stop() -> bool:  # asked before each step: true before step `steps`
        calls["n"] += 1
        return calls["n"] > steps

    return should_stop


def crash_at(step: int):
    calls = {"n": 0}

    def should_stop() -> bool:  # a crash inside the run (here: raised before step `step`)
        calls["n"] += 1
        if calls["n"] > step:
            raise RuntimeError("simulated crash")
        return False

    return should_stop


@pytest.mark.parametrize("scope,every,interrupt", [("lora", 0, "cancel"), ("cross-attn", 2, "crash")])
def test_interrupted_then_resumed_equals_uninterrupted(sd1_files, tmp_path, scope, every, interrupt):
    """Ctrl-C (should_stop) saves the state at the step it stopped; a crash keeps the last periodic state
    (--checkpoint-every). Either way --resume ends on the uninterrupted run's weights, bit for bit."""
    cache = tmp_path / "cache"
    reference = run_unlearn(settings_for(sd1_files, tmp_path / "ref", cache, scope=scope))

    out = tmp_path / "out"
    settings = settings_for(sd1_files, out, cache, scope=scope, checkpoint_every=every)
    if interrupt == "cancel":
        with pytest.raises(UnlearningCancelled, match="--resume") as info:
            run_unlearn(settings, should_stop=stop_after(2))
        assert "stopped after 2 of 5 steps" in str(info.value)
    else:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_unlearn(settings, should_stop=crash_at(3))
    assert sorted(p.name for p in out.iterdir()) == ["sd1-rgd-nudity.resume.json",
                                                     "sd1-rgd-nudity.resume.safetensors"]
    with pytest.raises(Exception, match="--resume"):  # a plain rerun would silently start over
        run_unlearn(settings)

    resumed = run_unlearn(settings | {"resume": True})
    assert resumed["summary"]["steps"] == 5
    # the same 5 steps, bit for bit: weights and the loss history
    after, expected = load_file(resumed["output"]), load_file(reference["output"])
    assert after.keys() == expected.keys()
    for key, tensor in expected.items():
        assert after[key].equal(tensor), key
    assert resumed["summary"] == reference["summary"] | {"seconds": resumed["summary"]["seconds"]}
    names = sorted(p.name for p in out.iterdir())
    assert not any("resume" in name for name in names)  # finished: the state is gone
    assert "sd1-rgd-nudity.safetensors" in names and "sd1-rgd-nudity.json" in names


def test_resume_refuses_other_settings(sd1_files, tmp_path):
    out = tmp_path / "out"
    settings = settings_for(sd1_files, out, tmp_path / "cache")
    with pytest.raises(UnlearningCancelled):
        run_unlearn(settings, should_stop=stop_after(1))
    with pytest.raises(Exception, match="--lr"):
        run_unlearn(settings | {"resume": True, "lr": 5e-3})
    with pytest.raises(Exception, match="--concept"):
        run_unlearn(settings | {"resume": True, "concept": "cat", "name": "sd1-rgd-nudity"})
    # more steps is fine: the run goes on from where it stopped
    report = run_unlearn(settings | {"resume": True, "steps": 6})
    assert report["summary"]["steps"] == 6
    # --overwrite starts over instead, discarding the state
    with pytest.raises(UnlearningCancelled):
        run_unlearn(settings | {"overwrite": True}, should_stop=stop_after(1))


def command(sd1_files, out, cache, *extra):
    return [sys.executable, "-m", "rgd_core.cli", "unlearn", "--checkpoint", str(sd1_files.checkpoint),
            "--config-folder", str(sd1_files.config_folder), "--concept", "nudity", "--out", str(out),
            "--train-prompts", "8", "--batch-size", "2", "--scope", "cross-attn", "--lr", "1e-3",
            "--cache-dir", str(cache), *extra]


def run_until(args, marker: str, signum: int, timeout: float = 240) -> tuple[int, str]:
    """Start the command, send ``signum`` once ``marker`` appears on stderr, return (exit code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                time.sleep(0.3)
                process.send_signal(signum)
                break
            assert time.monotonic() < deadline, "".join(seen)
        _, rest = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(seen) + rest


def test_ctrl_c_during_training_saves_the_state_and_says_how_to_resume(sd1_files, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, err = run_until(command(sd1_files, out, cache, "--steps", "100000", "--sample-steps", "2",
                                  "--checkpoint-every", "0"), "training", signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert "rgd: interrupted:" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["sd1-rgd-nudity.resume.json",
                                                     "sd1-rgd-nudity.resume.safetensors"]
    from safetensors import safe_open

    with safe_open(str(out / "sd1-rgd-nudity.resume.safetensors"), framework="pt") as handle:
        done = json.loads(handle.metadata()["rgd"])["completed_steps"]
    # resume, asking for no more steps than were done: it finishes from the saved state and writes the results
    cli.main(command(sd1_files, out, cache, "--steps", str(max(done, 1)), "--sample-steps", "2", "--resume")[3:])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["sd1-rgd-nudity-diff.safetensors", "sd1-rgd-nudity.json", "sd1-rgd-nudity.safetensors"]


def test_sigterm_while_sampling_writes_nothing(sd1_files, tmp_path):
    signum, code = signal.SIGTERM, 143
    out = tmp_path / "out"
    exit_code, err = run_until(command(sd1_files, out, tmp_path / "cache", "--steps", "2", "--sample-steps",
                                       "400"), "sampling", signum)
    assert exit_code == code, err
    assert "Traceback" not in err and "rgd: interrupted; nothing was written" in err
    assert not out.exists() or list(out.iterdir()) == []

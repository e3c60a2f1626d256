import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rgd_core.errors import NonFiniteError, RGDInputError, UnlearningCancelled
from rgd_core.method.paired_data import batch_indices
from rgd_core.method.unlearner import UnlearnConfig, Unlearner, step_seed, summarize


class TinyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 4))
        self.head_bias = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return self.body(x) + self.head_bias


def regression_loss(inputs, targets, batch=16):
    """Noisy regression on a fixed data set; batch indices and noise come from the step generator."""

    def loss(model, generator):
        index = torch.randint(0, inputs.shape[0], (batch,), generator=generator)
        noise = 0.05 * torch.randn(inputs[index].shape, generator=generator)
        return (model(inputs[index] + noise) - targets[index]).square()

    return loss


def make_problem():
    generator = torch.Generator().manual_seed(42)
    forget_x = torch.randn(64, 4, generator=generator) + 2.0
    retain_x = torch.randn(64, 4, generator=generator) - 2.0
    # Both sets share the map x -> W x, so forgetting and retaining genuinely conflict.
    w = torch.randn(4, 4, generator=generator)
    forget, retain = regression_loss(forget_x, forget_x @ w), regression_loss(retain_x, retain_x @ w)
    return pretrained(forget, retain), forget, retain


_PRETRAINED = {}


def pretrained(forget, retain):
    """A model that already fits both sets, as a base model does before unlearning."""
    if not _PRETRAINED:
        model = TinyDenoiser()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(300):
            loss = forget(model, generator).mean() + retain(model, generator).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _PRETRAINED["state"] = snapshot(model)
    model = TinyDenoiser()
    model.load_state_dict(_PRETRAINED["state"])
    return model.train()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


CONFIG = dict(steps=30, lr=1e-2, retain_weight=2.0, seed=3)


@pytest.mark.parametrize("method", ["rgd", "rgd-adam", "graddiff"])
def test_forget_loss_rises(method):
    model, forget, retain = make_problem()
    before = snapshot(model)
    result = Unlearner(model, forget, retain, UnlearnConfig(method=method, **CONFIG)).run()
    records = result.records
    assert len(records) == 30
    assert summarize(records)["final_forget_loss"] > 10 * records[0]["forget_loss"]
    assert_same_weights(snapshot(model), before)  # the model passed in is untouched
    assert not torch.equal(result.model.body[0].weight, model.body[0].weight)


def test_rgd_forgets_more_and_keeps_retain_loss_lower_than_graddiff():
    model, forget, retain = make_problem()
    rgd = summarize(Unlearner(model, forget, retain, UnlearnConfig(method="rgd", **CONFIG)).run().records)
    plain = summarize(Unlearner(model, forget, retain, UnlearnConfig(method="graddiff", **CONFIG)).run().records)
    assert rgd["final_forget_loss"] > plain["final_forget_loss"]
    assert rgd["final_retain_loss"] < plain["final_retain_loss"]


def test_records_hold_the_documented_fields():
    model, forget, retain = make_problem()
    seen = []
    Unlearner(model, forget, retain, UnlearnConfig(steps=3, seed=1)).run(callbacks=[seen.append])
    assert [r["step"] for r in seen] == [0, 1, 2]
    for record in seen:
        assert set(record) >= {"forget_loss", "retain_loss", "cosine", "conflict", "forget_grad_norm",
                               "retain_grad_norm", "ascent_active", "seconds"}
        assert -1.0 <= record["cosine"] <= 1.0
        assert record["conflict"] == (record["cosine"] < 0)


def test_same_seed_same_weights_other_seed_other_weights():
    model, forget, retain = make_problem()
    a = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run().model
    b = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run().model
    c = Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "seed": 4})).run().model
    assert_same_weights(snapshot(a), snapshot(b))
    assert not torch.equal(a.body[0].weight, c.body[0].weight)


def test_only_the_trainable_scope_changes():
    model, forget, retain = make_problem()
    result = Unlearner(
        model, forget, retain, UnlearnConfig(**CONFIG), trainable=lambda name, p: name.startswith("body.3")
    ).run()
    after, before = snapshot(result.model), snapshot(model)
    for key in before:
        assert torch.equal(after[key], before[key]) != key.startswith("body.3"), key
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored after the run


def test_in_place_edits_the_given_model():
    model, forget, retain = make_problem()
    before = snapshot(model)
    result = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG), in_place=True).run()
    assert result.model is model
    assert not torch.equal(model.body[0].weight, before["body.0.weight"])


def test_cancel_leaves_model_untouched_and_leaves_only_a_complete_checkpoint(tmp_path):
    """Cancel with a checkpoint path: the model passed in is untouched, and the folder holds the checkpoint file and
    nothing else (no temporary file). That file is complete: it loads, and holds exactly the state of a run of its
    step count: the state at the stop (``run`` saves on cancel) or, where a version does not, the last periodic one
    (step 3)."""
    model, forget, retain = make_problem()
    before = snapshot(model)
    seen = []
    checkpoint = tmp_path / "run.safetensors"
    unlearner = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG))
    with pytest.raises(UnlearningCancelled):
        unlearner.run(callbacks=[seen.append], should_stop=lambda: len(seen) >= 5, checkpoint_path=checkpoint,
                      checkpoint_every=3)
    assert len(seen) == 5
    assert_same_weights(snapshot(model), before)
    assert list(tmp_path.iterdir()) == [checkpoint]

    saved = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG))
    saved.load_checkpoint(checkpoint)
    assert saved.completed_steps in (3, 5)
    assert saved.records == seen[: saved.completed_steps]
    if saved.completed_steps == 5:
        reference = unlearner.model
    else:
        reference = Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "steps": 3})).run().model
    assert_same_weights(snapshot(saved.model), snapshot(reference))  # the saved state is that run's, bit for bit


def test_cancel_without_a_checkpoint_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    model, forget, retain = make_problem()
    seen = []
    with pytest.raises(UnlearningCancelled):
        Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run(
            callbacks=[seen.append], should_stop=lambda: len(seen) >= 2, checkpoint_every=1
        )
    assert list(tmp_path.iterdir()) == []


def test_exception_in_callback_leaves_model_untouched():
    model, forget, retain = make_problem()
    before = snapshot(model)

    def interrupt(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run(callbacks=[interrupt])
    assert_same_weights(snapshot(model), before)


@pytest.mark.parametrize("method,optimizer", [("rgd", "adam"), ("rgd", "sgd"), ("rgd-adam", "adam")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, method, optimizer):
    model, forget, retain = make_problem()
    config = UnlearnConfig(method=method, optimizer=optimizer, **CONFIG)
    full = Unlearner(model, forget, retain, config).run()

    checkpoint = tmp_path / "run.safetensors"
    seen = []
    with pytest.raises(UnlearningCancelled):  # "killed" at step 13; the last checkpoint is at step 10
        Unlearner(model, forget, retain, config).run(
            callbacks=[seen.append], should_stop=lambda: len(seen) >= 13,
            checkpoint_path=checkpoint, checkpoint_every=5,
        )
    resumed = Unlearner(model, forget, retain, config).run(resume_from=checkpoint)
    assert_same_weights(snapshot(resumed.model), snapshot(full.model))
    assert [r["forget_loss"] for r in resumed.records] == [r["forget_loss"] for r in full.records]


def test_a_run_saved_with_gpu_kernels_resumes_with_this_machines(tmp_path):
    """Adam's fused kernel is chosen on GPUs and saved with the optimizer's settings; a run stopped on a GPU and
    resumed on a CPU must run the CPU's kernels, and still end where the uninterrupted run does."""
    model, forget, retain = make_problem()
    config = UnlearnConfig(**CONFIG)
    full = Unlearner(model, forget, retain, config).run()
    checkpoint = tmp_path / "run.safetensors"
    seen = []
    with pytest.raises(UnlearningCancelled):
        Unlearner(model, forget, retain, config).run(callbacks=[seen.append], should_stop=lambda: len(seen) >= 10,
                                                     checkpoint_path=checkpoint, checkpoint_every=5)
    with safe_open(str(checkpoint), framework="pt") as handle:  # as a CUDA run would have written it
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        header = json.loads(handle.metadata()["rgd"])
    header["param_groups"] = [{**group, "fused": True} for group in header["param_groups"]]
    save_file(tensors, str(checkpoint), {"rgd": json.dumps(header)})
    resumed = Unlearner(model, forget, retain, config)
    resumed.load_checkpoint(checkpoint)
    assert not resumed.optimizer.param_groups[0]["fused"]
    resumed.run(resume_from=checkpoint)
    assert_same_weights(snapshot(resumed.model), snapshot(full.model))


def test_resume_refuses_other_settings(tmp_path):
    model, forget, retain = make_problem()
    checkpoint = tmp_path / "run.safetensors"
    Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "steps": 5})).run(
        checkpoint_path=checkpoint, checkpoint_every=5
    )
    with pytest.raises(RGDInputError, match="seed"):
        Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "seed": 9})).run(resume_from=checkpoint)


def test_non_finite_loss_stops_before_the_step(tmp_path):
    model, forget, retain = make_problem()
    before = snapshot(model)
    calls = []

    def poisoned(m, generator):
        calls.append(1)
        error = retain(m, generator)
        return error * (math.nan if len(calls) == 3 else 1.0)

    unlearner = Unlearner(model, forget, poisoned, UnlearnConfig(**CONFIG), in_place=True)
    with pytest.raises(NonFiniteError, match="step 2"):
        unlearner.run(checkpoint_path=tmp_path / "c.safetensors", checkpoint_every=100)
    assert unlearner.completed_steps == 2
    assert list(tmp_path.iterdir()) == []
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.body[0].weight, before["body.0.weight"])  # two good steps were applied


def test_skip_truncation_turns_ascent_off_above_threshold():
    model, forget, retain = make_problem()
    # The forget loss starts well above 0.01, so every step skips the ascent: g_f = 0, no conflict.
    config = UnlearnConfig(truncation="skip", truncation_threshold=0.01, **{**CONFIG, "steps": 4})
    records = Unlearner(model, forget, retain, config).run().records
    for record in records:
        assert record["ascent_active"] is False
        assert record["forget_grad_norm"] == 0.0
        assert record["conflict"] is False


def test_elementwise_truncation_bounds_the_ascent():
    model, forget, retain = make_problem()
    plain = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run().records
    clipped = Unlearner(
        model, forget, retain, UnlearnConfig(truncation="elementwise", truncation_threshold=0.05, **CONFIG)
    ).run().records
    assert summarize(clipped)["final_forget_loss"] < summarize(plain)["final_forget_loss"]


@pytest.mark.parametrize(
    "bad", [dict(method="pcgrad"), dict(optimizer="lion"), dict(method="rgd-adam", optimizer="sgd"), dict(lr=0.0), dict(truncation="clip"),
            dict(truncation="skip", truncation_threshold=-1.0)]
)
def test_bad_settings_raise_one_clear_error(bad):
    with pytest.raises(RGDInputError):
        UnlearnConfig(**bad)


def test_empty_scope_is_an_error():
    model, forget, retain = make_problem()
    with pytest.raises(RGDInputError, match="no trainable parameters"):
        Unlearner(model, forget, retain, trainable=lambda name, p: False)


@pytest.mark.parametrize("side", ["forget", "retain"])
def test_an_infinite_gradient_with_a_finite_loss_stops_before_the_step(side):
    """sqrt at 0 has value 0 and an infinite derivative: every loss stays finite, one gradient does not."""
    model, forget, retain = make_problem()
    probe = nn.Parameter(torch.zeros(()))
    model.register_parameter("probe", probe)  # a trainable parameter the poisoned loss goes through at 0
    before = snapshot(model)

    losses = []

    def poisoned(loss):
        def wrapped(m, generator):
            error = loss(m, generator) + m.probe.sqrt() * (m.probe.detach() == 0)
            losses.append(error.detach())
            return error

        return wrapped

    forget_loss, retain_loss = (poisoned(forget), retain) if side == "forget" else (forget, poisoned(retain))
    unlearner = Unlearner(model, forget_loss, retain_loss, UnlearnConfig(**CONFIG), in_place=True)
    seen = []
    with pytest.raises(NonFiniteError, match="step 0") as caught:
        unlearner.run(callbacks=[seen.append])
    assert losses and all(torch.isfinite(error).all() for error in losses)  # the losses were finite
    assert f"|g_{side[0]}| inf" in str(caught.value)
    assert seen == [] and unlearner.completed_steps == 0
    assert_same_weights(snapshot(model), before)  # nothing was applied
    assert all(p.grad is None for p in model.parameters())


def test_a_zero_retain_gradient_passes_the_forget_gradient_through():
    """g_r = 0 (a retain loss that no trainable weight changes): no conflict, no 0/0, and the update is g_f alone
    (README's table: "g_r = 0 -> g_f + lambda g_r"). Plain SGD, so the step is -lr * g_f exactly as computed here."""
    from rgd_core.method.unlearner import step_seed

    model, forget, _ = make_problem()
    model.eval()  # no dropout: the forget gradient below is a function of the step generator only
    zero_retain = lambda m, generator: (m(torch.ones(4, 4)) * 0.0).square()  # noqa: E731
    config = UnlearnConfig(method="rgd", optimizer="sgd", steps=1, lr=0.1, retain_weight=2.0, seed=3)
    result = Unlearner(model, forget, zero_retain, config).run()
    (record,) = result.records
    assert record["retain_grad_norm"] == 0.0 and record["forget_grad_norm"] > 0
    assert record["conflict"] is False and record["cosine"] == 0.0

    reference = Unlearner(model, forget, zero_retain, config).model  # a fresh copy of the same weights
    objective = -forget(reference, torch.Generator().manual_seed(step_seed(3, 0))).mean()
    grads = torch.autograd.grad(objective, list(reference.parameters()))
    for (name, edited), start, g_f in zip(result.model.named_parameters(), reference.parameters(), grads):
        # same maths, a separately built graph: equal up to float round-off
        torch.testing.assert_close(edited, start - 0.1 * g_f, rtol=1e-5, atol=1e-6, msg=name)


def test_load_checkpoint_refuses_a_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    model, forget, retain = make_problem()
    foreign = tmp_path / "model.safetensors"
    save_file(snapshot(model), str(foreign))  # a real weights file, not a run's checkpoint
    with pytest.raises(RGDInputError, match="not an rgd unlearner checkpoint"):
        Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).load_checkpoint(foreign)
    with pytest.raises(RGDInputError, match="not found"):
        Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run(resume_from=tmp_path / "missing.safetensors")


def test_load_checkpoint_refuses_other_trainable_parameters(tmp_path):
    model, forget, retain = make_problem()
    checkpoint = tmp_path / "run.safetensors"
    Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "steps": 2}),
              trainable=lambda name, p: name.startswith("body.3")).run(checkpoint_path=checkpoint, checkpoint_every=2)
    before = snapshot(model)
    unlearner = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG), in_place=True)
    with pytest.raises(RGDInputError, match="other trainable parameters"):
        unlearner.load_checkpoint(checkpoint)
    assert_same_weights(snapshot(model), before)
    assert unlearner.completed_steps == 0


def test_resume_refuses_another_truncation_threshold(tmp_path):
    model, forget, retain = make_problem()
    checkpoint = tmp_path / "run.safetensors"
    settings = {**CONFIG, "truncation": "elementwise", "truncation_threshold": 0.05}
    Unlearner(model, forget, retain, UnlearnConfig(**{**settings, "steps": 2})).run(checkpoint_path=checkpoint,
                                                                                   checkpoint_every=2)
    other = UnlearnConfig(**{**settings, "truncation_threshold": 0.5})
    with pytest.raises(RGDInputError, match="truncation_threshold"):
        Unlearner(model, forget, retain, other).load_checkpoint(checkpoint)


class WideDenoiser(TinyDenoiser):
    """TinyDenoiser's parameter names with a wider hidden layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Dropout(0.1), nn.Linear(64, 4))


def test_load_checkpoint_refuses_other_shapes_and_changes_nothing(tmp_path):
    model, forget, retain = make_problem()
    checkpoint = tmp_path / "run.safetensors"
    Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "steps": 2})).run(checkpoint_path=checkpoint,
                                                                                 checkpoint_every=2)
    wide = WideDenoiser()
    before = snapshot(wide)
    unlearner = Unlearner(wide, forget, retain, UnlearnConfig(**CONFIG), in_place=True)
    try:
        with pytest.raises(RGDInputError):
            unlearner.load_checkpoint(checkpoint)
    finally:
        assert_same_weights(snapshot(wide), before)


def test_load_checkpoint_refuses_a_file_that_is_not_safetensors(tmp_path):
    model, forget, retain = make_problem()
    broken = tmp_path / "run.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(RGDInputError, match="run.safetensors"):
        Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).load_checkpoint(broken)


def test_adaptive_stop_finishes_once_the_forget_loss_has_risen_and_says_why():
    model, forget, retain = make_problem()
    config = UnlearnConfig(steps=200, lr=1e-2, retain_weight=2.0, seed=3, stop_ratio=5.0, stop_every=5)
    records = Unlearner(model, forget, retain, config).run().records
    assert len(records) < 200 and len(records) % 5 == 0  # stopped on a probe step, well before the cap
    last = records[-1]
    assert last["probe_ratio"] >= 5.0 and "5x" in last["stop_reason"]
    assert all(r["probe_ratio"] < 5.0 for r in records[4:-1:5])  # the probes before it had not reached the target
    assert summarize(records)["stop_reason"] == last["stop_reason"]


def test_adaptive_stop_does_not_stop_a_model_that_has_not_forgotten():
    model, forget, retain = make_problem()
    # a learning rate too small to move the model: the probe ratio stays near its start and the cap ends the run
    config = UnlearnConfig(steps=20, lr=1e-9, retain_weight=2.0, seed=3, stop_ratio=2.0, stop_every=5)
    records = Unlearner(model, forget, retain, config).run().records
    assert len(records) == 20 and records[-1]["stop_reason"] == "step cap: 20 steps"
    assert all(r["probe_ratio"] < 2.0 for r in records[4::5])


def test_the_probe_is_fixed_and_leaves_training_bit_identical():
    model, forget, retain = make_problem()
    plain = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG)).run().model
    # a target that is never reached: probing every step must not change a single weight of the run
    probed = Unlearner(model, forget, retain, UnlearnConfig(**CONFIG, stop_ratio=1e9, stop_every=1))
    assert_same_weights(snapshot(probed.run().model), snapshot(plain))
    assert probed.probe_losses() == probed.probe_losses()


@pytest.mark.parametrize("bad", [dict(stop_ratio=1.0), dict(stop_ratio=-2.0), dict(stop_ratio=math.inf),
                                 dict(stop_ratio=2.0, stop_every=0)])
def test_bad_stop_settings_are_refused(bad):
    with pytest.raises(RGDInputError, match="stop_ratio"):
        UnlearnConfig(**bad)


def test_with_several_concepts_the_stop_waits_for_the_slowest():
    """Pairs of concept A are unlearned at once, those of B slowly: the whole probe's ratio reaches the target long
    before B's does. Grouped by concept, the run goes on until B has reached it too, and says which was last."""
    count, batch = 8, 4
    groups = ["A" if i % 2 == 0 else "B" for i in range(count)]
    weight = torch.nn.Parameter(torch.zeros(()))
    model = torch.nn.Module()
    model.weight = weight
    running: list[Unlearner] = []

    def forget_loss(module, generator):
        index = batch_indices(generator, count, batch)
        done = running[-1].completed_steps
        values = torch.tensor([10.0 if groups[i] == "A" else 1.0 + 0.2 * done for i in index])
        return (values + 0 * module.weight)[:, None]

    def retain_loss(module, generator):
        return torch.ones(batch, 1) + 0 * module.weight

    config = UnlearnConfig(steps=40, lr=1e-3, seed=0, stop_ratio=3.0, stop_every=5)

    def pair_groups(generator):
        return [groups[i] for i in batch_indices(generator, count, batch).tolist()]

    running.append(Unlearner(model, forget_loss, retain_loss, config))
    whole = running[-1].run().records
    running.append(Unlearner(model, forget_loss, retain_loss, config, pair_groups=pair_groups))
    grouped = running[-1].run()
    assert len(whole) == 5  # (10 + 2) / 2 = 6 on the whole probe at the first probe
    assert len(grouped.records) == 10  # B: 1 + 0.2 * 10 = 3 at step 10
    last = grouped.records[-1]
    assert set(last["probe_ratios"]) == {"A", "B"} and last["probe_ratios"]["A"] == pytest.approx(10.0)
    assert last["probe_ratio"] == pytest.approx(3.0) and "lowest: B" in last["stop_reason"]


def two_concept_problem(a_falls_back_at: int = 10**9):
    """Concept A's pairs read weight ``a``, B's weight ``b``; A is at the target from the start (until step
    ``a_falls_back_at``), B never reaches it. The retain loss is constant, so only the ascent moves a weight."""
    count, batch = 8, 4
    groups = ["A" if i % 2 == 0 else "B" for i in range(count)]
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
    running: list[Unlearner] = []

    def forget_loss(module, generator):
        index = batch_indices(generator, count, batch).tolist()
        high = 10.0 if running[-1].completed_steps < a_falls_back_at else 1.0
        return torch.stack([high + module.a if groups[i] == "A" else 1.0 + module.b for i in index])[:, None]

    def retain_loss(module, generator):
        return torch.ones(batch, 1) + 0 * (module.a + module.b)

    def pair_groups(generator):
        return [groups[i] for i in batch_indices(generator, count, batch).tolist()]

    def make(model, **overrides):
        config = UnlearnConfig(**{**dict(steps=20, lr=1e-2, optimizer="sgd", seed=0, stop_ratio=3.0, stop_every=5),
                                  **overrides})
        running.append(Unlearner(model, forget_loss, retain_loss, config, pair_groups=pair_groups))
        return running[-1]

    return model, make


def a_after_each_step(unlearner, **run):
    values = []
    unlearner.run(callbacks=[lambda record: values.append(float(unlearner.model.a.detach()))], **run)
    return values


@pytest.mark.parametrize("per_concept", [True, False])
def test_a_concept_at_the_target_leaves_the_ascent_and_the_others_go_on(per_concept):
    model, make = two_concept_problem()
    retiring = make(model, forget_per_concept=per_concept)
    a_values = a_after_each_step(retiring)
    assert len(a_values) == 20  # B never reaches the target: the cap ends the run
    assert a_values[4] > 0 and a_values[4:] == [a_values[4]] * 16  # A ascended until the probe at step 5, then not
    assert float(retiring.model.b.detach()) > 0.1  # B ascended throughout
    assert retiring.records[4]["retired"] == ["A"] and "retired" not in retiring.records[3]  # probe steps only
    # every concept ascended to the end: A keeps rising
    everyone = a_after_each_step(make(model, retire_erased=False))
    assert everyone[-1] > everyone[4] > 0


def test_a_retired_concept_that_falls_back_is_ascended_again():
    model, make = two_concept_problem(a_falls_back_at=10)
    a_values = a_after_each_step(make(model))
    assert a_values[4:10] == [a_values[4]] * 6  # retired at the probe of step 5 (and kept there at step 10's)
    assert a_values[-1] > a_values[14]  # step 15's probe finds A below the target: it is ascended again


def test_resume_keeps_the_retired_concepts(tmp_path):
    model, make = two_concept_problem()
    whole = make(model).run().model
    path, seen = tmp_path / "run.safetensors", []
    with pytest.raises(UnlearningCancelled):  # stopped at step 7, after A was retired at step 5's probe
        make(model).run(callbacks=[seen.append], should_stop=lambda: len(seen) >= 7, checkpoint_path=path)
    resumed = make(model)
    resumed.run(resume_from=path)
    assert_same_weights(snapshot(resumed.model), snapshot(whole))


def test_a_judge_decides_the_stop_and_leaves_training_bit_identical():
    """The judge's share falls as steps go by; the run stops at the first probe where it is at most stop_share.
    The judge draws from the global generator, which must not change what training does."""
    model, forget, retain = make_problem()
    seen_at = []

    def judge(module):
        torch.randn(100)  # a judge that samples: its global draws are undone
        module.eval()  # as samplers do: the modes are put back, or dropout would be off for the steps after
        seen_at.append(len(seen_at))
        return {"concept": max(0.0, 0.5 - 0.1 * len(seen_at))}

    config = UnlearnConfig(**CONFIG, stop_every=5, stop_share=0.1)
    judged = Unlearner(model, forget, retain, config, judge=judge)
    rng_state = torch.get_rng_state()
    records = judged.run().records
    assert torch.equal(torch.get_rng_state(), rng_state) and judged.model.training
    assert len(records) == 20 and records[-1]["judge_shares"] == {"concept": pytest.approx(0.1)}
    assert "judge sees the concept in 10.0%" in records[-1]["stop_reason"]
    assert [r["judge_shares"]["concept"] for r in records[4:-1:5]] == pytest.approx([0.4, 0.3, 0.2])
    plain = Unlearner(model, forget, retain, UnlearnConfig(**{**CONFIG, "steps": 20})).run()
    assert_same_weights(snapshot(judged.model), snapshot(plain.model))


def test_a_judge_retires_the_concepts_it_no_longer_sees():
    model, make = two_concept_problem()
    unlearner = make(model)
    unlearner.judge = lambda module: {"A": 0.0, "B": 0.5}  # A gone from the first probe, B never
    a_values = a_after_each_step(unlearner)
    assert len(a_values) == 20 and a_values[4:] == [a_values[4]] * 16
    assert unlearner.records[4]["retired"] == ["A"] and unlearner.records[-1]["stop_reason"] == "step cap: 20 steps"


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_a_stop_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(RGDInputError, match="stop_share"):
        UnlearnConfig(stop_share=share)


@pytest.mark.parametrize("per_concept", [True, False])
def test_each_concept_is_ascended_as_hard_as_in_a_run_of_its_own(per_concept):
    """Before any probe: with the per-concept sum, weight a (read only by A's pairs) moves by lr x 1 on the first
    step whatever A's share of the batch; with one mean over the batch, by lr x A's share."""
    model, make = two_concept_problem()
    unlearner = make(model, steps=1, forget_per_concept=per_concept)
    groups = unlearner.pair_groups(torch.Generator().manual_seed(step_seed(0, 0)))
    unlearner.run()
    share = groups.count("A") / len(groups)
    assert 0 < share < 1
    assert float(unlearner.model.a.detach()) == pytest.approx(1e-2 * (1.0 if per_concept else share))


def test_a_batch_of_retired_concepts_only_has_no_ascent():
    model, make = two_concept_problem()
    unlearner = make(model)
    unlearner.retired = {"A", "B"}
    errors = torch.stack([1.0 + unlearner.model.a, 2.0 + unlearner.model.b])[:, None]
    for per_concept in (True, False):
        unlearner.config.forget_per_concept = per_concept
        objective, active = unlearner._concepts_objective(errors, 0, errors.mean(), torch.tensor(True))
        assert float(objective.detach()) == 0.0 and not bool(active) and objective.requires_grad


def test_a_judge_that_leaves_out_a_concept_is_refused():
    model, make = two_concept_problem()
    unlearner = make(model)
    unlearner.judge = lambda module: {"A": 0.0}
    with pytest.raises(RGDInputError, match="every concept of the run.*B"):
        unlearner.run()


def _without_config_keys(path, *keys):
    """The checkpoint as an rgd older than ``keys`` wrote it."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        header = json.loads(handle.metadata()["rgd"])
    for key in keys:
        del header["config"][key]
    save_file(tensors, str(path), {"rgd": json.dumps(header)})


def test_a_checkpoint_older_than_the_several_concept_settings_resumes_only_as_it_ran(tmp_path):
    model, make = two_concept_problem()
    path, seen = tmp_path / "run.safetensors", []
    old = dict(forget_per_concept=False, retire_erased=False)
    with pytest.raises(UnlearningCancelled):
        make(model, **old).run(callbacks=[seen.append], should_stop=lambda: len(seen) >= 3, checkpoint_path=path)
    _without_config_keys(path, "forget_per_concept", "retire_erased")
    with pytest.raises(RGDInputError, match="older rgd.*retire_erased=False"):
        make(model).run(resume_from=path)
    with pytest.raises(RGDInputError, match="older rgd.*forget_per_concept=False"):
        make(model, forget_per_concept=True, retire_erased=False).run(resume_from=path)
    assert len(make(model, **old).run(resume_from=path).records) == 20
    # a file made under another default of these settings: start again, or resume with the setting it was made with
    with pytest.raises(UnlearningCancelled):
        make(model, forget_per_concept=True).run(callbacks=[seen.append], should_stop=lambda: len(seen) >= 13,
                                                  checkpoint_path=path)
    with pytest.raises(RGDInputError, match=r"forget_per_concept=True, .*start the run again.*--forget-objective per-concept"):
        make(model).run(resume_from=path)
    # one concept: the new settings change nothing, so an older file resumes with the defaults
    single, forget, retain = make_problem()
    with pytest.raises(UnlearningCancelled):
        Unlearner(single, forget, retain, UnlearnConfig(**CONFIG)).run(
            callbacks=[seen.append], should_stop=lambda: len(seen) >= 6, checkpoint_path=path)
    _without_config_keys(path, "forget_per_concept", "retire_erased")
    assert len(Unlearner(single, forget, retain, UnlearnConfig(**CONFIG)).run(resume_from=path).records) == 30

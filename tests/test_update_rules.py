import pytest
import torch

from reference_update import flatten_graddiff, flatten_restricted_gradient
from rgd_core.method.update_rules import gradient_stats, graddiff, restricted_gradient, restricted_gradient_


def random_grads(seed, shapes=((7, 3), (5,), (2, 3, 4), (1,), (16, 8))):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator) for s in shapes]


def inner(xs, ys):
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(xs, ys))


def conflicting_pair(seed):
    """g_r with a strong component against g_f, so <g_f, g_r> < 0 for sure."""
    forget = random_grads(seed)
    noise = random_grads(seed + 1000)
    retain = [-0.8 * f + 0.3 * n for f, n in zip(forget, noise)]
    assert inner(forget, retain) < 0
    return forget, retain


def assert_close_lists(actual, expected, rtol=1e-6):
    scale = max(float(e.abs().max()) for e in expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("retain_weight", [0.5, 1.0, 1.6, 5.0])
def test_matches_flatten_reference_when_conflicting(seed, retain_weight):
    forget, retain = conflicting_pair(seed)
    ours = restricted_gradient(forget, retain, retain_weight)
    assert_close_lists(ours, flatten_restricted_gradient(forget, retain, retain_weight))


@pytest.mark.parametrize("seed", range(5))
def test_no_projection_when_not_conflicting(seed):
    forget = random_grads(seed)
    retain = [f + 0.1 * n for f, n in zip(forget, random_grads(seed + 7))]
    assert inner(forget, retain) > 0
    ours = restricted_gradient(forget, retain, 1.6)
    assert_close_lists(ours, flatten_restricted_gradient(forget, retain, 1.6))
    assert_close_lists(ours, [f + 1.6 * r for f, r in zip(forget, retain)])


@pytest.mark.parametrize("seed", range(5))
def test_update_descends_both_objectives_to_first_order(seed):
    forget, retain = conflicting_pair(seed)
    d = restricted_gradient(forget, retain, 1.6)
    # Moving along -d lowers L_f and L_r to first order: <d, g_f> >= 0 and <d, g_r> >= 0 (Theorem 4).
    assert inner(d, forget) >= -1e-6
    assert inner(d, retain) >= -1e-6
    # GradDiff on the same pair makes one of them worse: that is the conflict RGD resolves.
    plain = graddiff(forget, retain, 1.6)
    assert min(inner(plain, forget), inner(plain, retain)) < 0


def test_opposite_gradients_give_zero_update():
    forget = random_grads(3)
    retain = [-2.5 * f for f in forget]
    for d in restricted_gradient(forget, retain, 1.6):
        assert float(d.abs().max()) < 1e-5


def test_zero_forget_gradient_passes_retain_gradient_through():
    retain = random_grads(4)
    forget = [torch.zeros_like(r) for r in retain]
    d = restricted_gradient(forget, retain, 1.6)
    for out, r in zip(d, retain):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, 1.6 * r)
    assert not bool(gradient_stats(forget, retain).conflict)


def test_in_place_rule_writes_grads_and_leaves_forget_grads_alone():
    forget, retain = conflicting_pair(9)
    forget_before = [f.clone() for f in forget]
    grads = [r.clone() for r in retain]
    stats = restricted_gradient_(grads, forget, 1.0)
    assert bool(stats.conflict)
    for f, before in zip(forget, forget_before):
        assert torch.equal(f, before)
    assert_close_lists(grads, flatten_restricted_gradient(forget, retain, 1.0))


def test_global_not_per_tensor_projection():
    # Per tensor the first pair conflicts and the second agrees; globally they agree, so nothing is projected.
    forget = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])]
    retain = [torch.tensor([-1.0, 0.0]), torch.tensor([2.0, 0.0])]
    d = restricted_gradient(forget, retain, 1.0)
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(d[1], torch.tensor([5.0, 0.0]))


def test_graddiff_matches_reference():
    forget, retain = conflicting_pair(11)
    assert_close_lists(graddiff(forget, retain, 5.0), flatten_graddiff(forget, retain, 5.0))


def random_metric(seed, like):
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.rand(t.shape, generator=generator) + 0.1 for t in like]
    return weights, (lambda i: weights[i])


@pytest.mark.parametrize("seed", range(4))
def test_metric_projection_protects_both_losses_for_the_preconditioned_step(seed):
    forget, retain = conflicting_pair(seed)
    weights, metric = random_metric(seed, forget)
    d = [r.clone() for r in retain]
    restricted_gradient_(d, forget, 1.6, metric=metric)
    step = [w * x for w, x in zip(weights, d)]  # the direction a diagonal preconditioner actually takes
    assert inner(step, forget) >= -1e-5
    assert inner(step, retain) >= -1e-5


def test_metric_projection_matches_a_weighted_flatten_reference():
    forget, retain = conflicting_pair(21)
    weights, metric = random_metric(21, forget)
    w = torch.cat([x.reshape(-1) for x in weights]).double()
    f = torch.cat([x.reshape(-1) for x in forget]).double()
    r = torch.cat([x.reshape(-1) for x in retain]).double()
    s, a, b = (w * f * r).sum(), (w * f * f).sum(), (w * r * r).sum()
    assert s < 0
    expected = (f - s / b * r) + 5.0 * (r - s / a * f)
    d = [x.clone() for x in retain]
    restricted_gradient_(d, forget, 5.0, metric=metric)
    torch.testing.assert_close(torch.cat([x.reshape(-1) for x in d]).double(), expected, rtol=1e-5, atol=1e-5)


def test_unit_metric_is_the_euclidean_rule():
    forget, retain = conflicting_pair(5)
    d = [r.clone() for r in retain]
    restricted_gradient_(d, forget, 1.6, metric=lambda i: torch.ones_like(forget[i]))
    assert_close_lists(d, restricted_gradient(forget, retain, 1.6), rtol=1e-5)

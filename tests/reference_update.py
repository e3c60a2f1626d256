"""The seed code's way to form the restricted gradient: flatten everything, project, unflatten.

Kept only as a reference for tests and benchmarks; it needs several parameter-sized buffers and host syncs,
which is exactly what rgd_core.method.update_rules avoids.
"""

import torch


def flatten_restricted_gradient(forget_grads, retain_grads, retain_weight):
    flat_f = torch.cat([g.reshape(-1) for g in forget_grads])
    flat_r = torch.cat([g.reshape(-1) for g in retain_grads])
    inner = torch.dot(flat_f, flat_r)
    proj_f, proj_r = flat_f, flat_r
    if inner.item() < 0 and flat_f.norm().item() > 0 and flat_r.norm().item() > 0:
        proj_f = flat_f - inner / torch.dot(flat_r, flat_r) * flat_r
        proj_r = flat_r - inner / torch.dot(flat_f, flat_f) * flat_f
    combined = proj_f + retain_weight * proj_r
    out, offset = [], 0
    for g in retain_grads:
        out.append(combined[offset : offset + g.numel()].view_as(g).clone())
        offset += g.numel()
    return out


def flatten_graddiff(forget_grads, retain_grads, retain_weight):
    return [f + retain_weight * r for f, r in zip(forget_grads, retain_grads)]

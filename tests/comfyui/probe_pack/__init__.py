"""A test-only ComfyUI pack: reports a digest of a MODEL's weights (and how many weight wrappers sit on its module), so
the integration tests can check that the MODEL a loader returned (and ComfyUI cached) is bit-identical after an RGD
run was cancelled or failed."""

import hashlib

import torch


class RGDTestModelDigest:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ()
    FUNCTION = "digest"
    OUTPUT_NODE = True
    NOT_IDEMPOTENT = True
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # run every time, even when the MODEL is a cached one

    def digest(self, model):
        import comfy.model_management

        wrappers = sum(len(getattr(m, "weight_function", [])) + len(getattr(m, "bias_function", []))
                       for m in model.model.modules())
        # Clones share one module, and ComfyUI patches it lazily for whichever clone it loads last: load this MODEL
        # so that the module holds its weights (base weights plus its own patches) before hashing.
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        digest = hashlib.sha256()
        for name, tensor in sorted(model.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return {"ui": {"text": [digest.hexdigest(), str(wrappers)]}}


NODE_CLASS_MAPPINGS = {"RGDTestModelDigest": RGDTestModelDigest}

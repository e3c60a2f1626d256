"""A test-only ComfyUI pack: reports a digest of a MODEL's weights (and how many weight wrappers sit on its module), so
the integration tests can check that the MODEL a loader returned (and ComfyUI cached) is bit-identical after an RGD
run was cancelled or failed; and gives a stand-in CLIP for flow models, whose real text encoders (T5-XXL alone has
4.7B parameters) a test cannot load."""

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


class TextStandIn:
    """The two calls ComfyUI's CLIPTextEncode and the RGD pack make on a CLIP, giving each prompt fixed random
    conditioning in SD3's shapes: 77 CLIP + 77 T5 tokens of width 4096, pooled CLIP-L+G of width 2048."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        seed = int.from_bytes(hashlib.sha256(tokens.encode()).digest()[:4], "little")
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(1, 154, 4096, generator=generator)
        return [[hidden, {"pooled_output": torch.randn(1, 2048, generator=generator)}]]


class RGDTestSD3TextStandIn:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        return (TextStandIn(),)


NODE_CLASS_MAPPINGS = {"RGDTestModelDigest": RGDTestModelDigest, "RGDTestSD3TextStandIn": RGDTestSD3TextStandIn}

"""Model backends: how the generic Unlearner meets a concrete generative model (here: diffusers Stable Diffusion)."""

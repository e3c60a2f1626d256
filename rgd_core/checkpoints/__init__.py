"""Loading and exporting Stable Diffusion checkpoints offline; ``configs`` holds the shipped model configs."""

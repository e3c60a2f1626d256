"""What the commands run: ``rgd unlearn`` (``unlearn``) and ``rgd eval`` (``evaluation``), headless, over the diffusers host."""

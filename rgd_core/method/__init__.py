"""The method: the restricted-gradient update, the losses, the unlearning loop and the paired data it trains on.

Nothing here imports diffusers or a host; every host reaches this through ``rgd_core.hosts.base.run_unlearning``.
"""

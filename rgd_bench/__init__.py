"""The offline benchmark worlds (digits, shapes), their trained models and classifiers, and the benches.

Built on rgd_core, which never imports this package: the benchmarks are one more user of the library.
"""

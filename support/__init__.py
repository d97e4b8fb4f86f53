"""Helpers the tests and the benchmarks share: the service as a child process, its events and context, the
kernels' instruction-set caps and a bounded load. Imports neither ``tests`` nor ``bench``."""

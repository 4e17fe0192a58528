"""Offline tools over the stage classes, no broker: the in-process chain, DER scoring, talk time, stage benchmarks."""

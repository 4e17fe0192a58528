"""The thin Faust layer: one app (consumer group) per stage, agents that only move messages.

Each stage runs as its own Faust app so stages scale independently: run more
`speakerflow worker embed` processes to add embedding capacity, on GPU nodes or not.
"""

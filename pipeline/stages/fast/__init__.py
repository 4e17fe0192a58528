"""The fast profile's stages: Silero VAD, Resemblyzer, incremental centroids; one speaker at a time."""

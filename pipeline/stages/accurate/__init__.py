"""The accurate profile's stages: segmentation-3.0 tracks, CAM++, overlap-aware clustering and a re-clustered report."""

"""Ray Tune integration for fedray sweeps."""

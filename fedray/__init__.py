"""The `fedray` command, above every layer (tuning -> actors -> engine): it parses arguments and calls
the engine (models, samples, runs in process), actors (runs on Ray) and tuning (sweeps, reports)."""

"""fedray engine: what a federated run is (config, data, models, methods, algorithms, ledger)."""

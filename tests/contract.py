"""The run-directory contract users rely on (DESIGN.md): keys every run must write."""

ROUND_KEYS = frozenset(
    {
        "round",
        "eval/accuracy",
        "eval/macro_f1",
        "eval/loss",
        "comm/bytes_up",
        "comm/bytes_down",
        "comm/bytes_total_cum",
        "time/virtual_s",
        "time/wall_s",
        "clients/sampled",
        "clients/completed",
        "clients/failed",
        "clients/dropped",
        "train/loss",
    }
)
SUMMARY_KEYS = frozenset(
    {
        "metrics",
        "best",
        "selected",
        "rounds_completed",
        "comm_bytes_up",
        "comm_bytes_down",
        "comm_bytes_total",
        "client_flops_per_round",
        "client_peak_memory_bytes",
        "trainable_params",
        "total_params",
        "wall_s",
        "virtual_s",
        "versions",
    }
)

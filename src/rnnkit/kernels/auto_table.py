"""The measurements behind ``kernel="auto"`` (:func:`rnnkit.kernels.select`): median seconds
of torch.nn's fused kernel and rnnkit's fast path on the same call, keyed
``"device|dtype|mode|train-or-infer|size class"``. Written by
``python bench/kernels.py --only auto --write-table``; edit by re-running it."""

SOURCE = (
    'x86_64 cpu, 2 threads, 2 cores, B=32, T=100, E=64, torch 2.13.0+cpu, 2026-12-03:'
    ' bench/kernels.py --only auto --write-table'
)

TABLE: dict[str, dict[str, float]] = {
    'cpu|float32|gru|infer|large': {'fused': 0.18887, 'fast': 0.10086},
    'cpu|float32|gru|infer|small': {'fused': 0.02973, 'fast': 0.01298},
    'cpu|float32|gru|infer|tiny': {'fused': 0.001311, 'fast': 0.001924},
    'cpu|float32|gru|train|large': {'fused': 0.5741, 'fast': 0.31445},
    'cpu|float32|gru|train|small': {'fused': 0.10067, 'fast': 0.04782},
    'cpu|float32|lstm|infer|large': {'fused': 0.11786, 'fast': 0.12888},
    'cpu|float32|lstm|infer|small': {'fused': 0.01291, 'fast': 0.01392},
    'cpu|float32|lstm|infer|tiny': {'fused': 0.000482, 'fast': 0.001095},
    'cpu|float32|lstm|train|large': {'fused': 0.37244, 'fast': 0.38902},
    'cpu|float32|lstm|train|small': {'fused': 0.04178, 'fast': 0.04383},
    'cpu|float32|rnn_tanh|infer|large': {'fused': 0.05818, 'fast': 0.03298},
    'cpu|float32|rnn_tanh|infer|small': {'fused': 0.00763, 'fast': 0.00479},
    'cpu|float32|rnn_tanh|infer|tiny': {'fused': 0.000395, 'fast': 0.000873},
    'cpu|float32|rnn_tanh|train|large': {'fused': 0.15806, 'fast': 0.10967},
    'cpu|float32|rnn_tanh|train|small': {'fused': 0.02018, 'fast': 0.0149},
}

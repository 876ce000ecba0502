"""The measurements behind ``kernel="auto"`` (:func:`rnnkit.kernels.select`): median seconds
of torch.nn's fused kernel and rnnkit's fast path on the same call, keyed
``"device|dtype|mode|train-or-infer|size class"``. Written by
``python bench/kernels.py --only auto --write-table``; edit by re-running it."""

SOURCE = (
    'x86_64 cpu, 2 threads, 2 cores, B=32, T=100, E=64, torch 2.13.0+cpu, 2026-12-03:'
    ' bench/kernels.py --only auto --write-table'
)

TABLE: dict[str, dict[str, float]] = {
    'cpu|float32|gru|infer|large': {'fused': 0.16994, 'fast': 0.09192},
    'cpu|float32|gru|infer|small': {'fused': 0.02768, 'fast': 0.01271},
    'cpu|float32|gru|train|large': {'fused': 0.67105, 'fast': 0.33901},
    'cpu|float32|gru|train|small': {'fused': 0.0933, 'fast': 0.04492},
    'cpu|float32|lstm|infer|large': {'fused': 0.11969, 'fast': 0.123},
    'cpu|float32|lstm|infer|small': {'fused': 0.01348, 'fast': 0.01452},
    'cpu|float32|lstm|train|large': {'fused': 0.35788, 'fast': 0.37925},
    'cpu|float32|lstm|train|small': {'fused': 0.04341, 'fast': 0.04531},
    'cpu|float32|rnn_tanh|infer|large': {'fused': 0.07224, 'fast': 0.0355},
    'cpu|float32|rnn_tanh|infer|small': {'fused': 0.01242, 'fast': 0.00632},
    'cpu|float32|rnn_tanh|train|large': {'fused': 0.20632, 'fast': 0.1216},
    'cpu|float32|rnn_tanh|train|small': {'fused': 0.03937, 'fast': 0.02126},
}

"""The measurements behind ``kernel="auto"`` (:func:`rnnkit.kernels.select`): median seconds
of torch.nn's fused kernel and rnnkit's fast path on the same call, keyed
``"device|dtype|mode|train-or-infer|size class"``. Written by
``python bench/kernels.py --only auto --write-table``; edit by re-running it."""

SOURCE = (
    'x86_64 cpu, 2 threads, 2 cores, B=32, T=100, E=64, torch 2.13.0+cpu, 2026-12-04:'
    ' bench/kernels.py --only auto --write-table'
)

TABLE: dict[str, dict[str, float]] = {
    'cpu|bfloat16-autocast-amx|gru|train|large': {'fused': 0.115285, 'fast': 0.080639},
    'cpu|bfloat16-autocast-amx|gru|train|small': {'fused': 0.051651, 'fast': 0.026321},
    'cpu|bfloat16-autocast-amx|lstm|train|large': {'fused': 0.042345, 'fast': 0.109626},
    'cpu|bfloat16-autocast-amx|lstm|train|small': {'fused': 0.019318, 'fast': 0.035028},
    'cpu|bfloat16-autocast-amx|rnn_tanh|train|large': {'fused': 0.034195, 'fast': 0.027347},
    'cpu|bfloat16-autocast-amx|rnn_tanh|train|small': {'fused': 0.022502, 'fast': 0.010258},
    'cpu|float32|gru|infer|large': {'fused': 0.116645, 'fast': 0.080553},
    'cpu|float32|gru|infer|small': {'fused': 0.018042, 'fast': 0.010811},
    'cpu|float32|gru|infer|tiny': {'fused': 0.000525, 'fast': 0.001095},
    'cpu|float32|gru|train|large': {'fused': 0.366508, 'fast': 0.270287},
    'cpu|float32|gru|train|small': {'fused': 0.056778, 'fast': 0.036435},
    'cpu|float32|lstm|infer|large': {'fused': 0.082238, 'fast': 0.112573},
    'cpu|float32|lstm|infer|small': {'fused': 0.009568, 'fast': 0.011458},
    'cpu|float32|lstm|infer|tiny': {'fused': 0.000515, 'fast': 0.001171},
    'cpu|float32|lstm|train|large': {'fused': 0.273075, 'fast': 0.311642},
    'cpu|float32|lstm|train|small': {'fused': 0.031943, 'fast': 0.035812},
    'cpu|float32|rnn_tanh|infer|large': {'fused': 0.034529, 'fast': 0.023863},
    'cpu|float32|rnn_tanh|infer|small': {'fused': 0.005685, 'fast': 0.003668},
    'cpu|float32|rnn_tanh|infer|tiny': {'fused': 0.000282, 'fast': 0.000756},
    'cpu|float32|rnn_tanh|train|large': {'fused': 0.111553, 'fast': 0.09584},
    'cpu|float32|rnn_tanh|train|small': {'fused': 0.022245, 'fast': 0.018028},
}

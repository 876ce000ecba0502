"""The measurements behind ``kernel="auto"`` (:func:`rnnkit.kernels.select`): median seconds
of torch.nn's fused kernel and rnnkit's fast path on the same call, keyed
``"device|dtype|mode|train-or-infer|size class"``. Written by
``python bench/kernels.py --only auto --write-table``; edit by re-running it."""

SOURCE = (
    'x86_64 cpu, 2 threads, 2 cores, B=32, T=100, E=64, torch 2.13.0+cpu, 2026-12-05:'
    ' bench/kernels.py --only auto --write-table'
)

TABLE: dict[str, dict[str, float]] = {
    'cpu|bfloat16-autocast-amx|gru|train|large': {'fused': 0.106962, 'fast': 0.032005},
    'cpu|bfloat16-autocast-amx|gru|train|small': {'fused': 0.047939, 'fast': 0.012789},
    'cpu|bfloat16-autocast-amx|lstm|train|large': {'fused': 0.036667, 'fast': 0.033528},
    'cpu|bfloat16-autocast-amx|lstm|train|small': {'fused': 0.014359, 'fast': 0.013224},
    'cpu|bfloat16-autocast-amx|rnn_tanh|train|large': {'fused': 0.034273, 'fast': 0.01113},
    'cpu|bfloat16-autocast-amx|rnn_tanh|train|small': {'fused': 0.019543, 'fast': 0.004713},
    'cpu|float32|gru|infer|large': {'fused': 0.100616, 'fast': 0.073808},
    'cpu|float32|gru|infer|small': {'fused': 0.013829, 'fast': 0.009419},
    'cpu|float32|gru|infer|tiny': {'fused': 0.000451, 'fast': 0.000949},
    'cpu|float32|gru|train|large': {'fused': 0.310648, 'fast': 0.239618},
    'cpu|float32|gru|train|small': {'fused': 0.047581, 'fast': 0.028616},
    'cpu|float32|lstm|infer|large': {'fused': 0.072858, 'fast': 0.106049},
    'cpu|float32|lstm|infer|small': {'fused': 0.008099, 'fast': 0.009827},
    'cpu|float32|lstm|infer|tiny': {'fused': 0.000402, 'fast': 0.000925},
    'cpu|float32|lstm|train|large': {'fused': 0.230845, 'fast': 0.283662},
    'cpu|float32|lstm|train|small': {'fused': 0.026408, 'fast': 0.029818},
    'cpu|float32|rnn_tanh|infer|large': {'fused': 0.031395, 'fast': 0.020346},
    'cpu|float32|rnn_tanh|infer|small': {'fused': 0.004699, 'fast': 0.003237},
    'cpu|float32|rnn_tanh|infer|tiny': {'fused': 0.000202, 'fast': 0.000586},
    'cpu|float32|rnn_tanh|train|large': {'fused': 0.087378, 'fast': 0.072344},
    'cpu|float32|rnn_tanh|train|small': {'fused': 0.013999, 'fast': 0.01207},
}

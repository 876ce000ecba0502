"""The measurements behind ``kernel="auto"`` (:func:`rnnkit.kernels.select`): median seconds
of torch.nn's fused kernel and rnnkit's fast path on the same call, keyed
``"device|dtype|mode|train-or-infer|size class"``. Written by
``python bench/kernels.py --only auto --write-table``; edit by re-running it."""

SOURCE = ("provisional, from bench/results/kernels-cpu.json (2 cores, B=32, T=100, E=64); "
          "bench/kernels.py --only auto --write-table")

TABLE: dict[str, dict[str, float]] = {
    "cpu|float32|gru|train|small": {"fused": 0.0486, "fast": 0.0180},
    "cpu|float32|rnn_tanh|train|small": {"fused": 0.0183, "fast": 0.0086},
    "cpu|float32|lstm|train|small": {"fused": 0.0194, "fast": 0.0195},
    "cpu|float32|lstm|train|large": {"fused": 0.1517, "fast": 0.1523},
}

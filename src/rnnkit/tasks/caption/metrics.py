"""Caption metrics: corpus chrF and BLEU through sacrebleu, as translation computes them
(:func:`rnnkit.tasks.translate.metrics.scores` and its BLEU tokenizer choice), against every
reference caption of an image; exact match; and the two baselines of every run: the most
common training caption, and nearest-neighbour retrieval by pixels (the first caption of
the training image closest in pixel space)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from rnnkit.tasks.translate.metrics import bleu_tokenize, scores


def caption_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]], lang: str = "en"
                   ) -> dict[str, Any]:
    """chrF, BLEU (sacrebleu, with signatures) of one caption per image against the image's
    references (one or more each), and ``exact``: the fraction of captions equal to one of
    their references. With one reference per image this is exactly
    :func:`~rnnkit.tasks.translate.metrics.scores`. Images with fewer references repeat
    their first (which changes neither chrF's best-reference nor BLEU's clipped counts)."""
    if len(hyps) != len(refs):
        raise ValueError(f"expected one caption per image, got {len(hyps)} captions and "
                         f"{len(refs)} reference lists")
    if any(not r for r in refs):
        raise ValueError("every image needs at least one reference caption")
    exact = sum(h in r for h, r in zip(hyps, refs, strict=True)) / max(len(hyps), 1)
    K = max((len(r) for r in refs), default=1)
    if K == 1:
        return {**scores(hyps, [r[0] for r in refs], lang), "exact": exact}
    import sacrebleu

    streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(K)]
    chrf = sacrebleu.metrics.CHRF()
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenize(lang))
    return {"chrf": chrf.corpus_score(list(hyps), streams).score,
            "bleu": bleu.corpus_score(list(hyps), streams).score,
            "chrf_signature": str(chrf.get_signature()),
            "bleu_signature": str(bleu.get_signature()), "exact": exact}


def pixel_features(images: Tensor, side: int = 16) -> Tensor:
    """``(B, 3, H, W)`` → ``(B, 3 * side * side)``: area-averaged to ``side × side``,
    centred and L2-normalised per image (no CNN)."""
    x = F.adaptive_avg_pool2d(images.float(), (side, side)).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1)


def nearest_captions(train_images: Tensor, train_caps: Sequence[str], images: Tensor,
                     chunk: int = 512) -> list[str]:
    """Each image's caption = ``train_caps[j]`` of the training image ``j`` nearest in
    :func:`pixel_features` (highest cosine similarity)."""
    A = pixel_features(train_images)
    out = []
    for k in range(0, images.shape[0], chunk):
        best = (pixel_features(images[k:k + chunk]) @ A.T).argmax(1).tolist()
        out += [train_caps[j] for j in best]
    return out


def baselines(train_images: Tensor, train_caps: Sequence[Sequence[str]], images: Tensor,
              refs: Sequence[Sequence[str]], lang: str = "en") -> dict[str, dict[str, Any]]:
    """``{"most common caption": scores, "nearest neighbour (pixels)": scores}``."""
    common = Counter(c for cs in train_caps for c in cs).most_common(1)[0][0]
    nn_caps = nearest_captions(train_images, [cs[0] for cs in train_caps], images)
    return {"most common caption": caption_scores([common] * len(refs), refs, lang),
            "nearest neighbour (pixels)": caption_scores(nn_caps, refs, lang)}

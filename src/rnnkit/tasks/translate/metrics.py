"""Translation metrics through ``sacrebleu`` (chrF and BLEU with their signatures), and the
two baselines every run is compared with: copying the source, and retrieval (the target of
the nearest training source by character n-gram TF-IDF)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CHAR_BLEU_LANGS = {"ko", "ja", "zh", "cjk"}


def bleu_tokenize(lang: str) -> str:
    """sacrebleu's BLEU tokenizer for a target language: ``char`` for Korean, Japanese,
    Chinese (no spaces between words, or syllable blocks that are words' parts), else
    ``13a`` (sacrebleu's default)."""
    return "char" if lang in CHAR_BLEU_LANGS else "13a"


def scores(hyps: Sequence[str], refs: Sequence[str], lang: str = "other") -> dict[str, Any]:
    """Corpus chrF and BLEU of ``hyps`` against one reference each: ``{"chrf", "bleu",
    "chrf_signature", "bleu_signature"}``."""
    try:
        import sacrebleu
    except ImportError:
        raise ValueError("translation metrics need sacrebleu: pip install 'rnnkit[translate]' "
                         "(or sacrebleu)") from None
    if len(hyps) != len(refs):
        raise ValueError(f"expected one hypothesis per reference, got {len(hyps)} hypotheses "
                         f"and {len(refs)} references")
    chrf = sacrebleu.metrics.CHRF()
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenize(lang))
    c = chrf.corpus_score(list(hyps), [list(refs)])
    b = bleu.corpus_score(list(hyps), [list(refs)])
    return {"chrf": c.score, "bleu": b.score, "chrf_signature": str(chrf.get_signature()),
            "bleu_signature": str(bleu.get_signature())}


class Retrieval:
    """The retrieval baseline: TF-IDF over character 1–4-grams (within word boundaries,
    sublinear tf, L2-normalised) of the training sources; a sentence's translation is the
    target of the training source with the highest cosine similarity."""

    def __init__(self, src: Sequence[str], tgt: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True,
                                   lowercase=True)
        self.X = self.vec.fit_transform(list(src))
        self.tgt = list(tgt)

    def nearest(self, texts: Sequence[str], exclude_self: bool = False, chunk: int = 512
                ) -> tuple[np.ndarray, np.ndarray]:
        """Per text, the index of the nearest training source and its cosine ``(N,)``,
        ``(N,)``. ``exclude_self``: ``texts`` are the training sources themselves, in order,
        and text ``i`` is never matched with source ``i`` (another copy of the same
        sentence still can)."""
        idx, sims = [], []
        for k in range(0, len(texts), chunk):
            sim = (self.vec.transform(list(texts[k:k + chunk])) @ self.X.T).toarray()
            if exclude_self:
                rows = np.arange(sim.shape[0])
                sim[rows, rows + k] = -1.0
            best = sim.argmax(1)
            idx.append(best)
            sims.append(sim[np.arange(len(best)), best])
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(idx), np.concatenate(sims)

    def __call__(self, texts: Sequence[str], chunk: int = 512) -> list[str]:
        return [self.tgt[i] for i in self.nearest(texts, chunk=chunk)[0]]


def baselines(train: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
              lang: str, retrieval: Retrieval | None = None) -> dict[str, dict[str, Any]]:
    """``{"copy": scores, "retrieval": scores}`` on ``test``; ``retrieval``: one already
    fitted on ``train`` (a run's translation memory), else fitted here."""
    r = retrieval or Retrieval(*train)
    return {"copy": scores(test[0], test[1], lang),
            "retrieval": scores(r(test[0]), test[1], lang)}

"""Extractive summaries and keywords from sentence embeddings; no language model, no network.

Both rank with the same two steps:

1. **Relevance**: cosine similarity to the document's centroid, the normalized mean of its
   sentence embeddings (centroid-based summarization: Radev et al., "Centroid-based summarization
   of multiple documents", 2004; with sentence embeddings as in Rossiello et al., "Centroid-based
   Text Summarization through Compositionality of Word Embeddings", 2017).
2. **Diversity**: maximal marginal relevance, picking greedily the item that maximizes
   ``lam * sim(item, centroid) - (1 - lam) * max sim(item, already picked)`` (Carbonell and
   Goldstein, "The use of MMR, diversity-based reranking for reordering documents and producing
   summaries", SIGIR 1998).

Keywords follow KeyBERT's method (Grootendorst 2020: candidate phrases ranked by the similarity
of their embedding to the document's, diversified with MMR); the candidates are RAKE's (Rose et
al., "Automatic keyword extraction from individual documents", 2010): runs of words between
stop words and punctuation, here one to three words long.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SUMMARY_SENTENCES = 5
KEYWORDS = 8
# Sentences outside 5-60 words are headings, captions, table rows or run-ons, rarely a summary.
MIN_SENTENCE_WORDS = 5
MAX_SENTENCE_WORDS = 60
MAX_CANDIDATES = 600  # sentences embedded for one summary (about 1 s of MiniLM on 2 cores)
MAX_PHRASES = 300  # keyword candidates embedded, the most frequent first

# RAKE's role for stop words: they split candidate phrases. A compact English list (function
# words, auxiliaries, pronouns, frequent adverbs); words missing here only make phrases longer.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either etc even ever
every few for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just least less let like made make many may me might more most much must
my myself neither no nor not now of off often on once one only or other others our ours ourselves
out over own per perhaps please same shall she should since so some such than that the their
theirs them themselves then there these they this those though through thus to too under until
up upon us use used uses using very via was we well were what when where whether which while
who whom whose why will with within without would yet you your yours yourself yourselves
""".split())

_PHRASE_SPLIT = re.compile(r"[^\w\s'-]+|\s-\s")
_WORD = re.compile(r"[A-Za-z][\w'-]*")


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ., ! or ? followed by space and a capital or digit.

    A rule, not a model: abbreviations such as "e.g. X" split wrongly, which costs a chunk or
    summary boundary, never text.
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


@dataclass(frozen=True)
class Ranked:
    """An item picked by :func:`mmr`: its index in the input and its relevance (cosine to the
    centroid, in [-1, 1])."""

    index: int
    relevance: float


def centroid(vectors: np.ndarray) -> np.ndarray:
    """The L2-normalized mean of unit vectors float32 [n, d] -> float32 [d] (zeros when n is 0)."""
    if len(vectors) == 0:
        return np.zeros(vectors.shape[1] if vectors.ndim == 2 else 0, np.float32)
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def mmr(vectors: np.ndarray, target: np.ndarray, k: int, *, lam: float = 0.7) -> list[Ranked]:
    """Maximal marginal relevance selection.

    Args:
        vectors: unit float32 [n, d] embeddings of the candidates.
        target: unit float32 [d], what the picks should be close to (the document centroid).
        k: how many to pick (fewer when n < k).
        lam: weight of relevance against redundancy, in [0, 1]; 0.7 favours relevance while
            still skipping near-repeats (a common setting since Carbonell and Goldstein 1998).

    Returns:
        The picks in the order chosen (most relevant first).
    """
    n = len(vectors)
    if n == 0 or k <= 0:
        return []
    relevance = vectors @ target
    similarity = vectors @ vectors.T
    picked: list[int] = []
    redundancy = np.full(n, -np.inf, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = lam * relevance - (1 - lam) * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    return [Ranked(i, round(float(relevance[i]), 4)) for i in picked]


def summary_candidates(sentences: Sequence[str]) -> list[int]:
    """Indices of sentences fit for a summary: 5-60 words, mostly letters (not a table of
    contents line or a formula), at most :data:`MAX_CANDIDATES` spread evenly over the text."""
    keep = []
    for i, s in enumerate(sentences):
        words = s.split()
        letters = sum(ch.isalpha() for ch in s)
        if MIN_SENTENCE_WORDS <= len(words) <= MAX_SENTENCE_WORDS and letters >= 0.6 * len(s):
            keep.append(i)
    if len(keep) > MAX_CANDIDATES:
        step = len(keep) / MAX_CANDIDATES
        keep = [keep[int(j * step)] for j in range(MAX_CANDIDATES)]
    return keep


def extractive_summary(sentences: Sequence[str], vectors: np.ndarray,
                       k: int = SUMMARY_SENTENCES, *, lam: float = 0.7) -> list[Ranked]:
    """Pick ``k`` sentences that together say what the text is about.

    Args:
        sentences: the candidate sentences, in text order.
        vectors: their unit embeddings, float32 [len(sentences), d].
        k: sentences in the summary.

    Returns:
        The picks in text order (a summary reads in the order of the text), each with its
        relevance to the centroid.

    Raises:
        ValueError: when ``vectors`` does not have one row per sentence.
    """
    if len(vectors) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(vectors)} vectors")
    picks = mmr(vectors, centroid(vectors), k, lam=lam)
    return sorted(picks, key=lambda r: r.index)


def candidate_phrases(text: str, *, max_words: int = 3) -> Counter:
    """RAKE candidates: runs of 1..``max_words`` non-stop words between stop words and
    punctuation, lowercased, with how often each occurs. Longer runs give their sub-runs
    of ``max_words`` (so "open source media search index" still yields phrases)."""
    counts: Counter = Counter()
    for piece in _PHRASE_SPLIT.split(text):
        run: list[str] = []
        for token in [*(_WORD.findall(piece)), None]:
            word = token.lower().strip("'-") if token else None
            if word and word not in STOP_WORDS and len(word) > 2 and not word.isdigit():
                run.append(word)
                continue
            if run:
                if len(run) <= max_words:
                    counts[" ".join(run)] += 1
                else:
                    for i in range(len(run) - max_words + 1):
                        counts[" ".join(run[i:i + max_words])] += 1
            run = []
    return counts


def rank_keywords(phrases: Sequence[str], vectors: np.ndarray, document: np.ndarray,
                  k: int = KEYWORDS, *, lam: float = 0.6) -> list[tuple[str, float]]:
    """KeyBERT-style ranking: the ``k`` phrases closest to the document embedding, diversified
    by MMR (lam 0.6 leans more to diversity than summaries do: keywords are short and near
    duplicates such as "search index" / "index" are common).

    Args:
        phrases: candidate phrases.
        vectors: their unit embeddings float32 [len(phrases), d].
        document: the document's unit embedding float32 [d] (the centroid of its sentences).

    Returns:
        ``(phrase, cosine to the document)`` best first.
    """
    return [(phrases[r.index], r.relevance) for r in mmr(vectors, document, k, lam=lam)]


def summary_markdown(title: str, picks: Sequence[tuple[str, str]],
                     keywords: Sequence[tuple[str, float]] = ()) -> str:
    """Markdown for the UI: a title, the keywords, then one bullet per summary sentence with its
    locator (``p. 3`` or ``0:12.40``) in front."""
    lines = [f"**{title}**", ""]
    if keywords:
        lines += ["Keywords: " + ", ".join(f"`{p}`" for p, _ in keywords), ""]
    lines += [f"- ({where}) {text}" for where, text in picks] or ["(no sentence to summarize)"]
    return "\n".join(lines)


def summarize(sentences: Sequence[tuple[object, str]], embed, *, k: int = SUMMARY_SENTENCES,
              keywords: int = KEYWORDS) -> dict:
    """Summary and keywords of a text given as located sentences; shared by PDFs and videos.

    Args:
        sentences: ``(locator, sentence)`` in text order; the locator is passed through (a page
            number for a PDF, a start time in seconds for a transcript).
        embed: ``texts -> float32 [n, d]`` unit vectors (``TextEmbedder.embed``).
        k: summary sentences.
        keywords: keyword phrases.

    Returns:
        ``{"summary": [{"locator", "text", "relevance"}] in text order,
        "keywords": [{"phrase", "relevance", "count"}] best first,
        "sentences": candidates considered, "phrases": keyword candidates considered}``.
        Empty lists when there is no sentence fit for a summary.
    """
    texts = [s for _, s in sentences]
    keep = summary_candidates(texts)
    if not keep:
        return {"summary": [], "keywords": [], "sentences": 0, "phrases": 0}
    vectors = embed([texts[i] for i in keep])
    picks = extractive_summary([texts[i] for i in keep], vectors, k)
    document = centroid(vectors)
    counts = candidate_phrases(" ".join(texts))
    phrases = [p for p, _ in counts.most_common(MAX_PHRASES)]
    ranked = rank_keywords(phrases, embed(phrases), document, keywords) if phrases else []
    return {
        "summary": [{"locator": sentences[keep[r.index]][0], "text": texts[keep[r.index]],
                     "relevance": r.relevance} for r in picks],
        "keywords": [{"phrase": p, "relevance": score, "count": counts[p]} for p, score in ranked],
        "sentences": len(keep),
        "phrases": len(phrases),
    }

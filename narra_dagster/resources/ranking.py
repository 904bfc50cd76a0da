"""Ranking of search candidates: lexical evidence, fusion, locators and a calibrated relevance.

Pure functions over the rows the two sides of a hybrid search return (BM25 full-text and vector
nearest neighbours, see :mod:`narra_dagster.resources.search_index`); no I/O, no model.

Per candidate row and query:

- ``bm25``: the row's BM25 score divided by the best BM25 score of the query (0 when the full-text
  side did not return the row), so 1.0 is the best text match there is;
- ``cosine``: cosine similarity of the query's and the row's MiniLM embeddings, in [-1, 1];
- ``coverage``: the share of the query's distinct content words (stop words left out unless
  the query has nothing else) that occur in the row's text;
- ``phrase``: the longest run of consecutive query words found consecutively in the text,
  divided by the query's word count (1.0 = the exact phrase).

Words match by their English Snowball stem (``snowballstemmer``, on PyStemmer's C code), so
"launches" finds "launch" but "internet" does not find "international".

The rank score is a weighted sum of those four (:class:`Weights`). ``relevance``, what a client
thresholds, is ``max(lexical, semantic)``: ``lexical = coverage x (0.5 + 0.5 x phrase)``, so one
of two words heard right ("walk in the garden" for the query "water the garden") still counts,
one of four does not; ``semantic`` the cosine mapped linearly from
[``SEMANTIC_FLOOR``, ``SEMANTIC_CEIL``] onto [0, 1]. Both ends are in [0, 1] and mean the same
thing for every query, unlike the rank score, which is relative to the other candidates. The
constants were chosen on ``python -m bench.relevance`` (judged queries against queries about
topics absent from the corpus), whose figures the README gives.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"[\w']+")
# Words too common to say what a text is about (a short English stop list).
STOP = frozenset(
    "a an and are as at be but by can do does for from has have how i if in is it its of on or so "
    "that the this to was were what when where which who why will with".split()
)
# Cosine similarities of all-MiniLM-L6-v2 below the floor are what unrelated texts score; at the
# ceiling a paraphrase of the text. From the relevance benchmark (40 absent-topic queries, 50
# judged questions): the best cosine of an absent-topic query's candidates had a median of 0.20
# and a maximum of 0.35; the best relevant row of a judged question a 5th percentile of 0.38 and
# a median of 0.53.
SEMANTIC_FLOOR, SEMANTIC_CEIL = 0.30, 0.65
# Below this relevance a hit is not shown by default (``min_relevance``). On the benchmark: 0.3
# answered all 40 absent-topic queries with no hit and kept a relevant hit in the top 10 for 96%
# of the judged queries (0.25: 100% / 99%, with a thinner margin; 0.45: 100% / 89%).
MIN_RELEVANCE = 0.3


@dataclass(frozen=True)
class Weights:
    """Weights of the rank score's terms (see the module docstring); chosen on the relevance
    benchmark: BM25 carries exact terms, the cosine paraphrases, coverage and phrase reward rows
    holding all of the query and in its order."""

    bm25: float = 0.5
    cosine: float = 0.3
    coverage: float = 0.4
    phrase: float = 0.4


MAX_QUERY_TOKENS = 64  # words of a query that are matched; the rest are ignored (bounds cost)
_stems: dict[str, str] = {}
_stem_lock = threading.Lock()
_stemmer = None


def _key(token: str) -> str:
    """The token's English Snowball stem (sleeps, sleeping -> sleep; launches -> launch), cached:
    PyStemmer's C implementation through snowballstemmer, about 1 us a word, and a dict after."""
    global _stemmer
    stem = _stems.get(token)
    if stem is None:
        with _stem_lock:  # a Snowball stemmer object is not thread-safe
            if _stemmer is None:
                import snowballstemmer

                _stemmer = snowballstemmer.stemmer("english")
            if len(_stems) > 500_000:
                _stems.clear()
            stem = _stems[token] = _stemmer.stemWord(token)
    return stem


def _prefix(stem: str) -> str:
    # What every word with this stem starts with: Snowball only rewrites the end of a word, and
    # may change a stem's last letter (cry -> cri).
    return stem[:min(4, max(1, len(stem) - 1))]


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters, digits, underscores, apostrophes)."""
    return [t for t in (m.lower().strip("'") for m in _TOKEN.findall(text)) if t]


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """``[(token, char_start, char_end)]`` of ``text``, tokens as :func:`tokens` makes them."""
    return [(t, m.start(), m.end()) for m in _TOKEN.finditer(text)
            if (t := m.group().lower().strip("'"))]


@dataclass
class Evidence:
    """What one row holds of one query. ``window`` is the (first, last) token index of the
    best-matching span in the token list it was computed on, or None when no query word occurs."""

    coverage: float
    phrase: float
    window: tuple[int, int] | None


class QueryTerms:
    """A query prepared for matching: its tokens, content words and their match keys."""

    def __init__(self, query: str):
        self.tokens = tokens(query)[:MAX_QUERY_TOKENS]
        content = [t for t in self.tokens if t not in STOP]
        # A query of stop words only ("the", "who") is matched on them, but they say nothing of
        # relevance (see relevance()).
        self.has_content = bool(content)
        self.wanted = list(dict.fromkeys(_key(t) for t in (content or self.tokens)))
        self.keys = [_key(t) for t in self.tokens]
        self.positions: dict[str, list[int]] = {}
        for i, k in enumerate(self.keys):
            self.positions.setdefault(k, []).append(i)
        self.span = len(self.tokens) + 3  # window width in tokens
        # A word starting as a wanted stem does (a superset of what evidence() matches).
        prefixes = sorted({_prefix(k) for k in self.wanted}, key=len, reverse=True)
        self._any = re.compile(r"(?<![\w'])(?:" + "|".join(map(re.escape, prefixes)) + ")",
                               re.IGNORECASE) if self.wanted else None
        # Content words of 5+ letters are also found inside a longer token: OCR often loses the
        # spaces between words ("Thelighthousekeeper", "SALESREPORT").
        self.long = sorted({t for t in content if len(t) >= 5}, key=len, reverse=True)
        self._inside = re.compile("|".join(map(re.escape, self.long)),
                                  re.IGNORECASE) if self.long else None

    def evidence(self, text_tokens: Sequence[str]) -> Evidence:
        """Coverage, phrase and best window of the query in ``text_tokens``.

        The best window is the (query length + 3)-token stretch holding the most distinct content
        words; ties go to the one with the longest in-order run, then to the first.
        """
        if not self.wanted or not text_tokens:
            return Evidence(0.0, 0.0, None)
        return self._evidence(self._keys(text_tokens))

    def evidence_in(self, text: str) -> Evidence:
        """:meth:`evidence` of ``text``; a text with none of the query's words (most candidates
        of the vector side) is dismissed by regular-expression searches, untokenized."""
        if not self.wanted or not (self._any.search(text)
                                   or (self._inside and self._inside.search(text))):
            return Evidence(0.0, 0.0, None)
        return self._evidence(self._keys(tokens(text)))

    def _keys(self, text_tokens: Sequence[str]) -> list[str]:
        """Match keys of a text's tokens: the stem, or a long query word's stem when the token
        holds that word glued to others."""
        keys = [_key(t) for t in text_tokens]
        if self.long:
            wanted = set(self.wanted)
            for j, token in enumerate(text_tokens):
                if keys[j] not in wanted and len(token) > 5:
                    inside = next((w for w in self.long if w in token), None)
                    if inside is not None:
                        keys[j] = _key(inside)
        return keys

    def _evidence(self, keys: list[str]) -> Evidence:
        wanted = set(self.wanted)
        hits = [j for j, k in enumerate(keys) if k in wanted]
        if not hits:
            return Evidence(0.0, 0.0, None)
        # run_at[j]: the longest run of consecutive query words that appears in the text from
        # position j on. A dynamic programme over matching (query, text) positions only, from
        # the end: O(matches), not O(query x text x run).
        run_at: dict[int, int] = {}
        following: dict[int, int] = {}  # query position -> run length from text position j + 1
        for j in range(len(keys) - 1, -1, -1):
            here = {}
            for i in self.positions.get(keys[j], ()):
                here[i] = 1 + following.get(i + 1, 0)
            if here:
                run_at[j] = max(here.values())
            following = here
        best_run = max(run_at.values(), default=0)
        coverage = len({keys[j] for j in hits}) / len(self.wanted)
        best, window = (-1, -1), None
        end = 0
        for a, start in enumerate(hits):  # windows start at a hit; `end` only moves forward
            end = max(end, a)
            while end + 1 < len(hits) and hits[end + 1] < start + self.span:
                end += 1
            inside = hits[a:end + 1]
            found = len({keys[j] for j in inside})
            if found < best[0]:
                continue
            score = (found, max(run_at.get(j, 0) for j in inside))
            if score > best:
                best, window = score, (start, max(inside[-1], start + run_at.get(start, 1) - 1))
        return Evidence(coverage, best_run / max(1, len(self.tokens)), window)


def semantic(cosine: float) -> float:
    """The cosine similarity mapped onto [0, 1] (see :data:`SEMANTIC_FLOOR`)."""
    return min(1.0, max(0.0, (cosine - SEMANTIC_FLOOR) / (SEMANTIC_CEIL - SEMANTIC_FLOOR)))


def relevance(terms: QueryTerms, ev: Evidence, cosine: float) -> float:
    """How surely a row answers the query, in [0, 1], comparable across queries (see the module
    docstring)."""
    lexical = ev.coverage * (0.5 + 0.5 * ev.phrase) if terms.has_content else 0.0
    return round(max(lexical, semantic(cosine)), 4)


def locate_words(terms: QueryTerms, words: Sequence[Sequence[Any]]) -> tuple[float, float] | None:
    """Where the query's words are spoken inside a chunk: ``(start_s, end_s)`` of the best window
    (see :meth:`QueryTerms.evidence`) over ``words`` = ``[[word, start_s, end_s], ...]`` (seconds),
    or None when no query word is spoken in it."""
    if not words:
        return None
    spoken = [(tokens(str(w[0])) or [""])[0] for w in words]
    ev = terms.evidence(spoken)
    if ev.window is None:
        return None
    a, b = ev.window
    return float(words[a][1]), float(words[b][2])


def locate_text(terms: QueryTerms, text: str) -> tuple[int, int] | None:
    """``(char_start, char_end)`` in ``text`` of the best-matching span, or None."""
    spans = token_spans(text)
    ev = terms.evidence([t for t, _, _ in spans])
    if ev.window is None:
        return None
    return spans[ev.window[0]][1], spans[ev.window[1]][2]


def locate_phrase(query: str, words: Sequence[Sequence[Any]]) -> tuple[float, float] | None:
    """Where ``query``'s words are spoken in a chunk's ``[[word, start_s, end_s], ...]``: the
    ``(start_s, end_s)`` of the best-matching span, or None when none of them is spoken."""
    return locate_words(QueryTerms(query), words)


@dataclass
class Scored:
    """A candidate row with its evidence: ``score`` ranks, ``relevance`` is for thresholds."""

    row: dict
    score: float
    relevance: float
    evidence: Evidence
    cosine: float
    bm25: float


def score_candidates(query: str | QueryTerms, rows: Sequence[dict],
                     weights: Weights = Weights()) -> list[Scored]:
    """Score the union of both sides' candidates, best first.

    Args:
        query: the search text, or its :class:`QueryTerms` when the caller has them already.
        rows: dicts with ``text``, ``bm25`` (raw BM25 score, 0 when the text side did not
            return the row) and ``cosine`` (similarity to the query, [-1, 1]).

    Returns:
        :class:`Scored` per row, highest ``score`` first (a weighted sum, not bounded to [0, 1];
        ``relevance`` is in [0, 1]).
    """
    terms = query if isinstance(query, QueryTerms) else QueryTerms(query)
    top_bm25 = max((r["bm25"] for r in rows), default=0.0) or 1.0
    out = []
    for row in rows:
        ev = terms.evidence_in(row["text"] or "")
        bm25 = row["bm25"] / top_bm25
        score = (weights.bm25 * bm25 + weights.cosine * row["cosine"]
                 + weights.coverage * ev.coverage + weights.phrase * ev.phrase)
        out.append(Scored(row, score, relevance(terms, ev, row["cosine"]), ev, row["cosine"], bm25))
    out.sort(key=lambda s: -s.score)
    return out


def same_place(a: dict, b: dict, slack_s: float = 3.0) -> bool:
    """True when two rows send a person to the same place: one page of a document, one image,
    or stretches of one recording within ``slack_s`` seconds of each other."""
    if a["media_id"] != b["media_id"]:
        return False
    if a.get("page") is not None or b.get("page") is not None:
        return a.get("page") == b.get("page")
    if a.get("start_s") is None or b.get("start_s") is None:
        return a.get("start_s") is None and b.get("start_s") is None  # one image
    a0, a1 = a["start_s"], a.get("end_s") if a.get("end_s") is not None else a["start_s"]
    b0, b1 = b["start_s"], b.get("end_s") if b.get("end_s") is not None else b["start_s"]
    return a0 <= b1 + slack_s and b0 <= a1 + slack_s

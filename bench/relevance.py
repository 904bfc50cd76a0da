"""python -m bench.relevance [--work DIR] [--out FILE]   (also: python -m bench --only relevance)

How good is search? A judged corpus and queries nobody tuned the ranking on, and narra's ranking
beside the baselines over the very same rows.

Corpus (built once, cached under ``--work``):
- PDFs of Debian documentation packages (shared-mime-info's specification, libtasn1's manual);
- spoken media made from real prose: sentences of those PDFs spoken by espeak-ng, as audio files
  and a talking video, with the second each sentence is spoken;
- text in images: sentences drawn on scikit-image's photos.

Queries, generated from the corpus with a fixed seed and judged by every place their sentence
is (its page, its recording's span, its image):
- ``phrase``: 5-7 consecutive words of a sentence (exact phrase);
- ``keywords``: the 3 rarest words of a sentence (by document frequency over the corpus);
- ``question``: hand-written natural-language questions with their judged page, kept in
  ``bench/relevance_questions.json``; the first 20 existed when the ranking's weights were chosen,
  the other 30 were written afterwards by someone who had not seen the ranking, and are also
  reported apart as ``held-out questions``;
- absent-topic queries (``bench/relevance_absent.json``, 40 of the three types about things the
  corpus does not talk about): the share answered with no hit ("no good match") at the default
  ``min_relevance`` and at other thresholds, against the judged queries' recall@10 kept.

A hit is relevant when it is the judged item and, for a PDF, the judged page; for speech, the
second it sends a person to (``start_s``; a chunk's start for the baselines, which have no
finer locator) lies within the judged sentence widened by 3 s; for an image, the item.

Locators: whether narra's first hit on a judged item points at the answer itself (the spoken
second inside the sentence, the matched text span on the page, the box inside the drawn text).

Systems, each over the same LanceDB table: ``narra`` (``LanceSearchIndex.search``, what
``narra search`` runs), ``bm25`` (LanceDB's full-text search alone), ``dense`` (MiniLM vectors
alone, exact) and ``rrf`` (reciprocal-rank fusion, k = 60, of the top 50 of each). Metrics per
query type and media kind: hit@1, MRR@10, nDCG@10 (binary gains), recall@10, and warm query
latency. The judged set lives here in bench/, never in the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.common import REPO, log

PDFS = [Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
        Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"
QUESTIONS = Path(__file__).with_name("relevance_questions.json")
ABSENT = Path(__file__).with_name("relevance_absent.json")
# The first 20 questions existed when the ranking's weights were chosen; the rest were written
# afterwards, by someone who had not seen the ranking: they are reported apart, as held out.
TUNED_QUESTIONS = 20
SPEECH_SLACK_S = 3.0
K = 10
RRF_K, RRF_DEPTH = 60, 50
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def _sentences(text: str) -> list[str]:
    text = re.sub(r"-\n(?=[a-z])", "", text)
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        words = s.split()
        letters = sum(c.isalpha() for c in s)
        if 8 <= len(words) <= 24 and letters > 0.75 * len(s.replace(" ", "")) and s[0].isupper():
            out.append(s.strip())
    return out


def build_corpus(folder: Path, seed: int = 7) -> dict:
    """Write the media of the corpus into ``folder`` and return the judgments' raw material:
    ``{"pdfs": [{path, pages: [text]}], "speech": [{path, timeline: [{text, start_s, end_s}]}],
    "images": [{path, text}]}``. Cached: a second call reads ``folder/corpus.json``."""
    import pypdf
    import skimage.data
    from PIL import Image, ImageDraw, ImageFont

    from tests.support.media import make_talking_video, speak, timeline_json, write_audio

    cached = folder / "corpus.json"
    if cached.exists():
        return json.loads(cached.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corpus: dict = {"pdfs": [], "speech": [], "images": []}
    pool: list[str] = []
    for pdf in PDFS:
        pages = [p.extract_text() or "" for p in pypdf.PdfReader(pdf).pages]
        corpus["pdfs"].append({"path": str(pdf), "pages": pages})
        pool += [s for page in pages for s in _sentences(page) if len(s) < 140]
    picked = [pool[i] for i in rng.choice(len(pool), size=30, replace=False)]
    for n in range(4):  # four recordings of five sentences, audio only
        sentences = picked[n * 5:(n + 1) * 5]
        audio, timeline = speak(sentences, gap_s=0.8)
        path = folder / f"recording-{n}.m4a"
        write_audio(audio, path, "m4a")
        corpus["speech"].append({"path": str(path), "timeline": timeline_json(timeline)})
    sentences = picked[20:24]
    path = folder / "talk.mp4"
    timeline = make_talking_video(path, sentences, ["astronaut", "coffee", "chelsea", "rocket"])
    corpus["speech"].append({"path": str(path), "timeline": timeline_json(timeline)})
    font = ImageFont.truetype(FONT, 28)
    photos = ["coffee", "chelsea", "astronaut", "rocket", "camera", "coins"]
    for n, sentence in enumerate(picked[24:30]):
        image = Image.fromarray(getattr(skimage.data, photos[n])()).convert("RGB")
        image = image.resize((1024, int(1024 * image.height / image.width)))
        draw = ImageDraw.Draw(image)
        words, lines = sentence.split(), []
        while words:
            lines.append(" ".join(words[:6]))
            words = words[6:]
        draw.rectangle([20, 20, 1004, 40 + 40 * len(lines)], fill=(255, 255, 255))
        for i, line in enumerate(lines):
            draw.text((30, 26 + 40 * i), line, font=font, fill=(0, 0, 0))
        path = folder / f"sign-{n}.png"
        image.save(path)
        corpus["images"].append({"path": str(path), "text": sentence})
    cached.write_text(json.dumps(corpus, indent=1))
    return corpus


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def make_queries(corpus: dict, keys: dict[str, str], seed: int = 11) -> list[dict]:
    """Judged queries: ``{"type", "kind", "query", "targets": [{"media_id", "page" | "span"}]}``.

    The spoken and drawn sentences are sentences of the PDFs, so a query made from one is
    answered by every place that holds that sentence: its recording's span, its image, and the
    PDF page it was taken from.
    """
    rng = np.random.default_rng(seed)
    units = []  # (kind, text, target)
    for pdf in corpus["pdfs"]:
        for number, page in enumerate(pdf["pages"], 1):
            for s in _sentences(page):
                units.append(("document", s, {"media_id": keys[pdf["path"]], "page": number}))
    for rec in corpus["speech"]:
        for t in rec["timeline"]:
            units.append(("video", t["text"], {"media_id": keys[rec["path"]],
                                               "span": [t["start_s"], t["end_s"]]}))
    for img in corpus["images"]:
        units.append(("image", img["text"], {"media_id": keys[img["path"]]}))
    same: dict[str, list[dict]] = defaultdict(list)
    for _, text, target in units:
        same[" ".join(_words(text))].append(target)
    df = Counter(w for _, text, _ in units for w in set(_words(text)))
    queries = []
    by_kind: dict[str, list] = defaultdict(list)
    for unit in units:
        by_kind[unit[0]].append(unit)
    quota = {"document": 30, "video": 25, "image": 6}
    for kind, items in by_kind.items():
        chosen = [items[i] for i in rng.choice(len(items), size=min(quota[kind], len(items)),
                                               replace=False)]
        for _, text, _ in chosen:
            targets = same[" ".join(_words(text))]
            words = text.split()
            n = int(rng.integers(5, 8))
            start = int(rng.integers(0, max(1, len(words) - n)))
            phrase = " ".join(words[start:start + n]).strip(".,;:()")
            queries.append({"type": "phrase", "kind": kind, "query": phrase, "targets": targets})
            rare = sorted(set(w for w in _words(text) if len(w) > 3), key=lambda w: (df[w], w))[:3]
            queries.append({"type": "keywords", "kind": kind, "query": " ".join(rare),
                            "targets": targets})
    if QUESTIONS.exists():
        for n, q in enumerate(json.loads(QUESTIONS.read_text())):
            queries.append({"type": "question", "kind": "document", "query": q["query"],
                            "held_out": n >= TUNED_QUESTIONS,
                            "targets": [{"media_id": keys[q["pdf"]], "page": q["page"]}]})
    return queries


def image_text_boxes(corpus: dict, keys: dict[str, str]) -> dict[str, list[float]]:
    """Per image item, the white band the sentence was drawn in: ``[x0, y0, x1, y1]`` pixels
    (see :func:`build_corpus`)."""
    out = {}
    for img in corpus["images"]:
        lines = math.ceil(len(img["text"].split()) / 6)
        out[keys[img["path"]]] = [20.0, 20.0, 1004.0, 40.0 + 40 * lines]
    return out


def locator_checks(q: dict, hits: list[dict], boxes: dict[str, list[float]]) -> dict[str, bool]:
    """Whether narra's first hit on a judged item points at the answer itself, per locator:
    ``speech``: on a judged recording, its ``start_s`` lies inside the spoken sentence (0.25 s
    early allowed, no slack after), against ``chunk``: whether the chunk's start would; ``text``:
    on a judged page, for a phrase query, its ``match`` span holds every content word of the
    phrase; ``box``: on a judged image, its box lies inside the band the text was drawn in."""
    from narra_dagster.resources.ranking import QueryTerms, _key, tokens

    out = {}
    for target in q["targets"]:
        first = next((h for h in hits if h["media_id"] == target["media_id"]), None)
        if first is None:
            continue
        if "span" in target and first.get("chunk_start_s") is not None and first.get("box") is None:
            a, b = target["span"]
            out.setdefault("speech", a - 0.25 <= first["start_s"] <= b)
            out.setdefault("chunk", a - 0.25 <= first["chunk_start_s"] <= b)
        elif "page" in target and q["type"] == "phrase" and first.get("page") == target["page"]:
            match = first.get("match")
            found = set(tokens(first["text"][match[0]:match[1]])) if match else set()
            keys = {_key(w) for w in found}
            out.setdefault("text", set(QueryTerms(q["query"]).wanted) <= keys)
        elif target["media_id"] in boxes and first.get("box") is not None:
            x0, y0, x1, y1 = first["box"]
            bx0, by0, bx1, by1 = boxes[target["media_id"]]
            out.setdefault("box", bx0 - 4 <= x0 and by0 - 4 <= y0 and x1 <= bx1 + 4 and y1 <= by1 + 4)
    return out


def relevant(hit: dict, q: dict) -> bool:
    """True when ``hit`` is one of the query's targets (see the module docstring)."""
    for target in q["targets"]:
        if hit["media_id"] != target["media_id"]:
            continue
        if "page" in target:
            if hit.get("page") == target["page"]:
                return True
        elif "span" in target:  # the second a person is sent to, +- 3 s
            a, b = target["span"]
            if a - SPEECH_SLACK_S <= hit["start_s"] <= b + SPEECH_SLACK_S:
                return True
        else:
            return True
    return False


def _metrics(ranked: list[bool]) -> dict:
    first = next((i for i, r in enumerate(ranked[:K]) if r), None)
    dcg = sum(1 / math.log2(i + 2) for i, r in enumerate(ranked[:K]) if r)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(K, max(1, sum(ranked)))))
    return {"hit@1": float(bool(ranked[:1] and ranked[0])),
            "mrr@10": 0.0 if first is None else 1 / (first + 1),
            "ndcg@10": dcg / ideal if ideal else 0.0,
            "recall@10": float(first is not None)}


def _row(r: dict) -> dict:
    start = r.get("start_s")
    return {"media_id": r["media_id"], "page": r.get("page"),
            "start_s": start if start is not None else 0.0,
            "end_s": r.get("end_s") if r.get("end_s") is not None else 0.0, "id": r["id"]}


def run(work: Path) -> dict:
    """Build (or reuse) the corpus and its index, then rank every query with every system."""
    from narra_dagster.app.processing import process_files
    from narra_dagster.definitions import build_defs
    from narra_dagster.resources import LanceSearchIndex

    import dagster as dg

    home = work / "home"
    os.environ["NARRA_HOME"] = str(home)
    corpus = build_corpus(work / "media")
    defs = build_defs()
    paths = [Path(p["path"]) for p in corpus["pdfs"]] + [Path(s["path"]) for s in corpus["speech"]] \
        + [Path(i["path"]) for i in corpus["images"]]
    keys_file = work / "keys.json"
    if keys_file.exists():
        keys = json.loads(keys_file.read_text())
    else:
        log(f"indexing {len(paths)} files")
        with dg.DagsterInstance.ephemeral() as instance:
            results = process_files(paths, instance, defs)
        failed = [r for r in results if r.status != "succeeded"]
        if failed:
            raise RuntimeError(f"the corpus did not index: {[(r.source_name, r.error) for r in failed]}")
        keys = {str(p): r.partition_key for p, r in zip(paths, results)}
        keys_file.write_text(json.dumps(keys))
    queries = make_queries(corpus, keys)
    index: LanceSearchIndex = defs.resources["search_index"]
    embedder = defs.resources["embedder"]
    table = index._table()
    rows = table.to_arrow().select(["id", "media_id", "page", "start_s", "end_s"]).to_pylist()
    by_id = {r["id"]: _row(r) for r in rows}
    log(f"{len(queries)} queries over {len(rows)} rows")

    def bm25(q: str, limit: int) -> list[dict]:
        return [by_id[r["id"]] for r in table.search(q, query_type="fts", fts_columns="text")
                .select(["id"]).limit(limit).to_list()]

    def dense(vector: np.ndarray, limit: int) -> list[dict]:
        return [by_id[i] for i, _ in index.nearest(vector, limit=limit, exact=True)]

    def rrf(q: str, vector: np.ndarray) -> list[dict]:
        scores: dict[str, float] = defaultdict(float)
        for side in (bm25(q, RRF_DEPTH), dense(vector, RRF_DEPTH)):
            for rank, hit in enumerate(side):
                scores[hit["id"]] += 1 / (RRF_K + rank + 1)
        return [by_id[i] for i, _ in sorted(scores.items(), key=lambda kv: -kv[1])][:K]

    boxes = image_text_boxes(corpus, keys)
    systems = {"narra": [], "bm25": [], "dense": [], "rrf": []}
    locators: dict[str, list[bool]] = defaultdict(list)
    kept_recall, top_relevance = [], []
    latency: dict[str, list[float]] = defaultdict(list)
    per_query = []
    for q in queries:
        vector = embedder.embed([q["query"]])[0]
        t = time.perf_counter()
        narra = [h.model_dump() for h in index.search(q["query"], vector, limit=K, min_relevance=0)]
        latency["narra"].append(time.perf_counter() - t)
        for name, ok in locator_checks(q, narra, boxes).items():
            locators[name].append(ok)
        top_relevance.append(max((h["relevance"] for h in narra), default=0.0))
        # The best relevance among its relevant hits: kept at a threshold at or below it.
        kept_recall.append(max((h["relevance"] for h in narra if relevant(h, q)), default=-1.0))
        ranked = {"narra": narra}
        t = time.perf_counter()
        ranked["bm25"] = bm25(q["query"], K)
        latency["bm25"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ranked["dense"] = dense(vector, K)
        latency["dense"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ranked["rrf"] = rrf(q["query"], vector)
        latency["rrf"].append(time.perf_counter() - t)
        outcome = {}
        for name, hits in ranked.items():
            m = _metrics([relevant(h, q) for h in hits])
            systems[name].append((q, m))
            outcome[name] = m["mrr@10"]
        per_query.append({**q, "mrr": outcome,
                          "narra_top": [(h["media_id"], h.get("page"), round(h["start_s"] or 0, 1))
                                        for h in narra[:3]]})
    absent = json.loads(ABSENT.read_text()) if ABSENT.exists() else []
    absent_top, absent_empty = [], []
    for q in absent:
        vector = embedder.embed([q["query"]])[0]
        hits = index.search(q["query"], vector, limit=K, min_relevance=0)
        absent_top.append(max((h.relevance for h in hits), default=0.0))
        absent_empty.append(not [h for h in hits if h.relevance >= index.min_relevance])
    summary: dict = {}
    for name, scored in systems.items():
        groups: dict[str, list[dict]] = defaultdict(list)
        for q, m in scored:
            groups["all"].append(m)
            groups[f"type={q['type']}"].append(m)
            groups[f"kind={q['kind']}"].append(m)
            if q.get("held_out"):
                groups["held-out questions"].append(m)
        summary[name] = {g: {k: round(statistics.mean(m[k] for m in ms), 3) for k in ms[0]}
                         | {"n": len(ms)} for g, ms in groups.items()}
    lat = {name: {"p50_ms": round(1000 * float(np.percentile(v, 50)), 1),
                  "p95_ms": round(1000 * float(np.percentile(v, 95)), 1)} for name, v in latency.items()}
    hardest = sorted(per_query, key=lambda r: r["mrr"]["narra"] - max(r["mrr"].values()))[:10]
    no_match = {
        "min_relevance": index.min_relevance,
        "absent_queries": len(absent),
        "absent_answered_no_match": round(statistics.mean(absent_empty), 3) if absent else None,
        "judged_recall@10_kept": round(statistics.mean(r >= index.min_relevance for r in kept_recall), 3),
        "by_threshold": [{"min_relevance": t,
                          "absent_no_match": round(statistics.mean(a < t for a in absent_top), 3)
                          if absent else None,
                          "judged_recall@10_kept": round(statistics.mean(r >= t for r in kept_recall), 3)}
                         for t in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)],
        "judged_recall@10_unfiltered": summary["narra"]["all"]["recall@10"],
        "top_relevance_absent_p50_p95": [round(float(np.percentile(absent_top, p)), 3)
                                         for p in (50, 95)] if absent else None,
        "top_relevance_judged_p5_p50": [round(float(np.percentile(top_relevance, p)), 3)
                                        for p in (5, 50)],
    }
    located = {name: {"share": round(statistics.mean(v), 3), "n": len(v)}
               for name, v in locators.items()}
    return {"rows": len(rows), "queries": len(queries), "summary": summary, "latency": lat,
            "no_match": no_match, "locators": located, "hardest": hardest, "per_query": per_query}


def print_table(result: dict) -> None:
    print(f"\nrelevance: {result['queries']} judged queries over {result['rows']} rows "
          f"(hit@1 / MRR@10 / nDCG@10 / recall@10)")
    groups = list(result["summary"]["narra"])
    print(f"{'group':<16} {'n':>4} " + " ".join(f"{s:>27}" for s in result["summary"]))
    for g in groups:
        cells = []
        for s in result["summary"]:
            m = result["summary"][s][g]
            cells.append(f"{m['hit@1']:.2f}/{m['mrr@10']:.2f}/{m['ndcg@10']:.2f}/{m['recall@10']:.2f}".rjust(27))
        print(f"{g:<16} {result['summary']['narra'][g]['n']:>4} " + " ".join(cells))
    print("latency (warm, in-process): " + ", ".join(
        f"{s} p50 {v['p50_ms']} ms p95 {v['p95_ms']} ms" for s, v in result["latency"].items()))
    nm = result["no_match"]
    print(f"\nno good match (relevance < {nm['min_relevance']}): {nm['absent_answered_no_match']:.0%} "
          f"of {nm['absent_queries']} absent-topic queries answered with no hit; judged queries' "
          f"recall@10 kept {nm['judged_recall@10_kept']} (unfiltered "
          f"{nm['judged_recall@10_unfiltered']}); best hit's relevance: absent p50/p95 "
          f"{nm['top_relevance_absent_p50_p95']}, judged p5/p50 {nm['top_relevance_judged_p5_p50']}")
    print("  threshold -> absent answered with no hit / judged recall@10 kept: " + ", ".join(
        f"{t['min_relevance']}: {t['absent_no_match']:.2f}/{t['judged_recall@10_kept']:.2f}"
        for t in nm["by_threshold"]))
    lo = result["locators"]
    print("locators, narra's first hit on a judged item: " + ", ".join(
        f"{name} {v['share']:.2f} (n={v['n']})" for name, v in lo.items())
        + "  [speech: start_s inside the spoken sentence; chunk: the chunk's start would be; "
          "text: the match span holds the phrase's words; box: inside the drawn text]")
    print("\nhardest queries for narra (its MRR against the best baseline's):")
    for r in result["hardest"]:
        best = max((v, k) for k, v in r["mrr"].items() if k != "narra")
        print(f"  [{r['type']}/{r['kind']}] {r['query'][:60]!r}: narra {r['mrr']['narra']:.2f}, "
              f"{best[1]} {best[0]:.2f}; narra's top 3 {r['narra_top']}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.relevance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--out", default="bench-relevance.json")
    args = p.parse_args()
    result = run(Path(args.work) / "relevance")
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

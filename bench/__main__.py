"""python -m bench [--quick | --full] [--out results.json] [--work DIR] [--sizes 10000,100000]

Builds the corpus, measures every section side by side in this one run, prints one table and
writes everything (the table's figures and the raw measurements) to ``--out``.

Sections: 1 orchestration overhead (narra process and sensor + daemon against a plain loop over
the same stage functions; executors), 2 transcription real-time factor, 3 embeddings, 4 search,
5 end to end (media minutes per wall minute, upload-to-searchable latency, peak memory). With
``--only relevance`` or ``--only asr`` (``bench/asr.py``: word error rate, real-time factor and
language detection of each Whisper model, about 8 minutes; only when named), those run on their
own corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import corpus as corpus_mod
from bench.common import REPO, log

PRESETS = {
    "quick": dict(videos=3, photos=10, long_s=60, transcribe_s=60, texts=500, batch_sizes=(32, 64),
                  sizes=(10_000, 100_000), queries=50, burst=3),
    "full": dict(videos=20, photos=100, long_s=300, transcribe_s=None, texts=2000,
                 batch_sizes=(16, 32, 64, 128), sizes=(10_000, 100_000, 1_000_000), queries=100,
                 burst=10),
}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, to check it works (default)")
    mode.add_argument("--full", action="store_true", help="the sizes the speed issue names")
    p.add_argument("--out", default="bench-results.json", help="JSON file to write")
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")),
                   help="corpus, cached search tables, homes (default .bench-work)")
    p.add_argument("--sizes", help="search table sizes, e.g. 10000,100000,1000000")
    p.add_argument("--videos", type=int, help="number of short videos")
    p.add_argument("--photos", type=int, help="number of photos")
    p.add_argument("--ann-index", help="ANN index type for the search section (default: the "
                                        "project's, IVF_HNSW_SQ); tables are cached per type")
    p.add_argument("--nprobes", type=int, help="IVF partitions probed (default: the project's)")
    p.add_argument("--whisper-checkpoint", help="an openai-whisper .pt checkpoint to measure too")
    p.add_argument("--only", help="comma-separated sections: overhead,executors,daemon,"
                                  "transcription,embeddings,search,relevance,asr")
    return p.parse_args()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, measure: str, value, unit: str = "", target: str = "",
            ok: bool | None = None) -> None:
        self.rows.append({"section": section, "measure": measure, "value": value, "unit": unit,
                          "target": target, "ok": ok})

    def print(self) -> None:
        widths = [max(len(str(r[k])) for r in self.rows + [{"section": "section", "measure": "measure"}])
                  for k in ("section", "measure")]
        print(f"{'section':<{widths[0]}}  {'measure':<{widths[1]}}  {'value':>12}  unit        target")
        for r in self.rows:
            mark = {True: "ok", False: "MISSED", None: ""}[r["ok"]]
            print(f"{r['section']:<{widths[0]}}  {r['measure']:<{widths[1]}}  {_fmt(r['value']):>12}  "
                  f"{r['unit']:<10}  {r['target']} {mark}".rstrip())


def main() -> int:
    args = _parse()
    preset = dict(PRESETS["full" if args.full else "quick"])
    if args.sizes:
        preset["sizes"] = tuple(int(s) for s in args.sizes.split(","))
    if args.videos:
        preset["videos"] = args.videos
    if args.photos:
        preset["photos"] = args.photos
    only = set(args.only.split(",")) if args.only else None
    wants = lambda name: only is None or name in only  # noqa: E731
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict = {"preset": "full" if args.full else "quick", "settings": {
        k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "load_avg_at_start": os.getloadavg()},
        "env": {k: os.environ.get(k) for k in ("NARRA_THREADS", "NARRA_PARALLEL_RUNS")}}
    table = Table()

    if only == {"relevance"}:  # its own judged corpus; nothing of the shared one is needed
        from bench import relevance

        results["relevance"] = relevance.run(work / "relevance")
        relevance.print_table(results["relevance"])
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
        return 0
    if only == {"asr"}:  # its own corpus (alsa-utils voice, espeak-ng speech), see bench/asr.py
        from bench import asr

        results["asr"] = asr.run_all(work / "asr", list(asr.CONFIGS))
        asr.print_table(results["asr"])
        Path(args.out).write_text(json.dumps(results, indent=1, default=str, ensure_ascii=False))
        return 0
    log("building the corpus")
    corpus = corpus_mod.build(work, videos=preset["videos"], photo_count=preset["photos"],
                              long_s=preset["long_s"])
    results["corpus"] = corpus

    from bench import models, overhead, search

    if wants("overhead"):
        sec = "1 overhead"
        o = results["overhead"] = {}
        o["long_video"] = overhead.process_vs_plain(
            "long", "video", [corpus["long_video"]], work, media_seconds=corpus["long_video_seconds"])
        r = o["long_video"]
        table.add(sec, f"{corpus['long_video_seconds'] / 60:.1f}-min video: narra process wall", r["dagster_wall_s"], "s")
        table.add(sec, "  same, plain loop wall", r["plain_wall_s"], "s")
        table.add(sec, "  Dagster overhead", r["overhead_pct_of_wall"], "% of wall", "< 15%",
                  r["overhead_pct_of_wall"] < 15)
        table.add(sec, "  overhead seconds (ratio)", f"{r['overhead_s']:.2f} ({r['ratio']:.2f}x)", "s")
        for label, batch in (("batch", None), ("no-batch", False)):
            key = f"short_videos_{label}"
            o[key] = overhead.process_vs_plain(
                f"short-{label}", "video", corpus["short_videos"], work, batch=batch,
                media_seconds=corpus["short_video_seconds"])
            r = o[key]
            table.add(sec, f"{r['items']} short videos, {label} ({r['runs']} run(s)): overhead/item",
                      r["overhead_per_item_s"], "s/item")
            table.add(sec, "  ratio Dagster/plain; worst step overhead", f"{r['ratio']:.2f}x; "
                      f"{max(r['overhead_per_step_s'].values(), default=0):.3f} s", "")
        o["photos"] = overhead.process_vs_plain("photos", "image", corpus["photos"], work)
        r = o["photos"]
        table.add(sec, f"{r['items']} photos, batch: overhead/item", r["overhead_per_item_s"],
                  "s/item", "< 1 s", r["overhead_per_item_s"] < 1.0)
        table.add(sec, "  photos wall Dagster / plain", f"{r['dagster_wall_s']:.1f} / {r['plain_wall_s']:.1f}", "s")
        if corpus["pdfs"]:
            o["pdfs"] = overhead.process_vs_plain("pdfs", "document", corpus["pdfs"], work)
            table.add(sec, f"{len(corpus['pdfs'])} PDFs: overhead/item", o["pdfs"]["overhead_per_item_s"], "s/item")

    if wants("executors"):
        sec = "1 executors"
        e = results["executors"] = overhead.executors(corpus["short_videos"][0], work)
        for mode, r in e.items():
            if "error" in r:
                table.add(sec, mode, "error", "", r["error"][:60])
                continue
            table.add(sec, f"{mode}: run wall / steps / gap between steps",
                      f"{r['run_wall_s']:.2f} / {r['steps_total_s']:.2f} / {r['mean_gap_between_steps_s']:.2f}", "s")

    if wants("daemon"):
        sec = "5 end to end"
        burst = corpus["short_videos"][1:1 + preset["burst"]]
        d = results["daemon"] = overhead.daemon_pipeline("video", corpus["short_videos"][0], burst, work)
        lat = d["latency"]
        ok = lat["latency_minus_processing_s"] < 20
        table.add(sec, "daemon ready (start to sensor heartbeat)", d["daemon_ready_s"], "s")
        table.add(sec, "upload -> searchable (one short video)", lat["upload_to_searchable_s"], "s")
        table.add(sec, "  of which processing (steps)", lat["processing_s"], "s")
        table.add(sec, "  latency - processing", lat["latency_minus_processing_s"], "s", "< 20 s", ok)
        table.add(sec, "  upload -> run created (sensor) / queued -> started",
                  f"{lat['upload_to_run_created_s']:.1f} / {lat['run_created_to_started_s']:.1f}", "s")
        if d.get("burst") and d["burst"]["wall_s"]:
            b = d["burst"]
            per_item = b["wall_s"] / b["items"]
            table.add(sec, f"daemon burst of {b['items']} short videos: wall per item", per_item, "s/item")
            plain = results.get("overhead", {}).get("short_videos_batch")
            if plain:
                plain_item = plain["plain_wall_s"] / plain["items"]
                table.add("1 overhead", "sensor+daemon: overhead/item vs plain loop",
                          per_item - plain_item, "s/item")

    if wants("transcription"):
        sec = "2 transcription"
        t = results["transcription"] = models.transcription(
            Path(corpus["long_video"]), work, seconds=preset["transcribe_s"],
            checkpoint=args.whisper_checkpoint)
        from narra_dagster.resources import FasterWhisperTranscriber

        default = FasterWhisperTranscriber()
        for r in t["runs"]:
            is_default = ("faster" in r["backend"] and r["compute_type"] == default.compute_type
                          and r["beam"] == default.beam_size)
            target = "<= 0.08" if is_default else ""  # the project's default configuration
            table.add(sec, f"{r['backend']} {r['compute_type']} beam {r['beam']}: RTF (WER)"
                      + (" (default)" if is_default else ""),
                      f"{r['rtf']:.3f} ({r['wer'] if r['wer'] is not None else '-'})", "",
                      target, r["rtf"] <= 0.08 if target else None)
        if "openai_whisper" in t:
            table.add(sec, "openai-whisper", "no weights", "", t["openai_whisper"][:40])

    if wants("embeddings"):
        sec = "3 embeddings"
        e = results["embeddings"] = models.embeddings(corpus["pdfs"], work, count=preset["texts"],
                                                       batch_sizes=preset["batch_sizes"])
        for name, variant in e["variants"].items():
            if "error" in variant:
                table.add(sec, name, "error", "", variant["error"][:60])
                continue
            for r in variant["runs"]:
                table.add(sec, f"{name} batch {r['batch_size']}: segments/s, tokens/s (per CPU-s)",
                          f"{r['segments_per_s']:.0f}, {r['tokens_per_s']:,} ({r['tokens_per_cpu_s']:,})", "")
            best = variant["best"]
            cosine = variant.get("cosine_vs_float32", {}).get("mean")
            is_int8 = "int8" in name  # the target is the project's default, ct2_int8
            table.add(sec, f"{name} best tokens/s (batch {best['batch_size']}, "
                      f"{e['mean_tokens_per_segment']} tok/segment)", best["tokens_per_s"], "tokens/s",
                      ">= 15,000" if name == "ct2_int8" else "",
                      best["tokens_per_s"] >= 15000 if name == "ct2_int8" else None)
            if is_int8 and cosine is not None:  # every int8 variant's accuracy cost
                table.add(sec, f"{name} mean cosine vs float32", cosine, "", ">= 0.98", cosine >= 0.98)

    if wants("search"):
        sec = "4 search"
        s = results["search"] = search.measure(work, list(preset["sizes"]), queries=preset["queries"],
                                               ann_index_type=args.ann_index, nprobes=args.nprobes)
        for r in s:
            big = r["rows"] >= 1_000_000
            table.add(sec, f"{r['rows']:,} rows flat: p50 / p95", f"{r['flat_p50_ms']:.1f} / {r['flat_p95_ms']:.1f}", "ms")
            table.add(sec, f"{r['rows']:,} rows {r['ann_index']}: p50 / p95",
                      f"{r['ann_p50_ms']:.1f} / {r['ann_p95_ms']:.1f}", "ms",
                      "p50 < 20 ms" if big else "", r["ann_p50_ms"] < 20 if big else None)
            table.add(sec, "  recall@10 vs exact", r["recall_at_10"], "", ">= 0.9" if big else "",
                      r["recall_at_10"] >= 0.9 if big else None)
            table.add(sec, "  hybrid search p50 / p95; upsert 40 rows",
                      f"{r['hybrid_p50_ms']:.1f} / {r['hybrid_p95_ms']:.1f}; {r['upsert_40_rows_ms']:.0f}", "ms",
                      "p95 < 50")

    if "overhead" in results:
        sec = "5 end to end"
        o = results["overhead"]
        for key, label in (("long_video", "long video"), ("short_videos_batch", "short videos (batch)")):
            r = o[key]
            table.add(sec, f"media minutes per wall minute, {label}", r["media_min_per_wall_min"], "x")
        peak = max(r["peak_rss_mb_dagster"] for r in o.values() if isinstance(r, dict))
        table.add(sec, "peak RSS of a narra process run", peak, "MB")

    if wants("relevance"):
        from bench import relevance

        results["relevance"] = relevance.run(work / "relevance")
        relevance.print_table(results["relevance"])

    if only and "asr" in only:  # about 8 minutes, so only when asked for
        from bench import asr

        results["asr"] = asr.run_all(work / "asr", list(asr.CONFIGS))
        asr.print_table(results["asr"])

    results["table"] = table.rows
    results["wall_s"] = round(time.time() - started, 1)
    results["load_avg_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print()
    table.print()
    print(f"\n{results['wall_s']:.0f} s; load average at start {results['machine']['load_avg_at_start'][0]:.1f}, "
          f"at end {results['load_avg_at_end'][0]:.1f} (figures are only comparable on a quiet machine); "
          f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

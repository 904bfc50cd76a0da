"""python -m bench.asr [--work DIR] [--out bench-asr.json] [--configs NAME,...]

Which Whisper to transcribe with, by numbers: word error rate (WER, jiwer, after lower-casing,
dropping punctuation and writing the numbers 0-12 as words), real-time factor (RTF: wall seconds
of transcription / seconds of audio, on this machine's cores, ``NARRA_THREADS`` if set), CPU
seconds per audio second (all threads; less sensitive than RTF to other work on the machine)
and language-detection accuracy of each configuration of :class:`FasterWhisperTranscriber`
(``CONFIGS``: tiny.en and base, int8, beam 1 and 5, base with ``language="en"`` and with
``language=None``), each in its own process so its load time and peak memory are its own. Audio:

- human voice: the recordings Debian's alsa-utils ships in ``/usr/share/sounds/alsa`` (one
  person saying "Front Center", "Front Left", ... "Side Right": the file names; 1.3-1.5 s each).
  ``Noise.wav`` holds no speech (steady noise): the words a model writes for it are counted as
  invented, not as WER;
- synthesized English: sentences of real prose from the Debian PDFs (shared-mime-info-spec,
  libtasn1), one recording per espeak-ng voice and speed (0.7 s between sentences), about
  2.5 minutes in all; RTF is measured on these;
- synthesized German, Spanish and French (espeak-ng's voice for each, male and female; 4
  sentences, one recording of about 20 s per voice): the detected language against the spoken
  one and the WER in that language, with ``language=None``; and the detector alone
  (``WhisperModel.detect_language``) on each sentence (3-6 s) and each alsa-utils clip. "lang
  20 s" counts the German, Spanish, French and English recordings, "lang 5 s" the single
  sentences and the human clips.

The audio is made once into ``--work``/asr/corpus.npz. Prints one table and writes everything to
``--out`` (JSON). Part of ``python -m bench --only asr`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from bench.common import REPO, log, run_measured

RATE = 16_000
ALSA = Path("/usr/share/sounds/alsa")
PDFS = [Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
        Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")]
# (espeak-ng voice, words per minute): both sexes, US and British English, two speeds.
ENGLISH_VOICES = [("en-us+m3", 140), ("en-us+f3", 175), ("en+m1", 160), ("en-gb+f2", 140)]
SENTENCES_PER_VOICE = 8
# Plain sentences of everyday speech, written for this benchmark (the Debian PDFs are English).
FOREIGN = {
    "de": ["Der Zug nach Berlin fährt heute um neun Uhr vom dritten Gleis ab.",
           "Morgen regnet es im Norden, im Süden bleibt es sonnig und warm.",
           "Bitte schicken Sie mir den Bericht bis Freitag Nachmittag.",
           "Im Garten wachsen Tomaten, Bohnen und große Sonnenblumen."],
    "es": ["El tren a Madrid sale a las nueve desde el andén tres.",
           "Mañana lloverá en el norte, pero en el sur hará sol y calor.",
           "Por favor, envíame el informe antes del viernes por la tarde.",
           "En el jardín crecen tomates, judías y girasoles muy altos."],
    "fr": ["Le train pour Paris part à neuf heures du quai numéro trois.",
           "Demain il pleuvra dans le nord, mais le sud restera ensoleillé.",
           "Merci de m'envoyer le rapport avant vendredi après-midi.",
           "Dans le jardin poussent des tomates, des haricots et des tournesols."],
}
FOREIGN_VARIANTS = ["", "+f3"]  # espeak-ng's default male voice and a female variant

# name: FasterWhisperTranscriber settings. tiny.en is English only (language "en" always).
CONFIGS = {
    "tiny.en beam5": dict(model="tiny.en", beam_size=5, language="en"),
    "tiny.en beam1": dict(model="tiny.en", beam_size=1, language="en"),
    "base en beam5": dict(model="base", beam_size=5, language="en"),
    "base en beam1": dict(model="base", beam_size=1, language="en"),
    "base auto beam5": dict(model="base", beam_size=5, language=None),
    "base auto beam1": dict(model="base", beam_size=1, language=None),
}

_NUMBERS = dict(enumerate("zero one two three four five six seven eight nine ten eleven "
                           "twelve".split()))


def norm(text: str, language: str = "en") -> str:
    """Lower case, NFC, punctuation to spaces (letters of any script kept), and for English the
    numbers 0-12 as words (Whisper writes "platform 4" for "platform four")."""
    text = unicodedata.normalize("NFC", text.lower()).replace("’", "'")
    words = [w.strip("'") for w in re.sub(r"[^\w']+|_", " ", text).split()]
    if language == "en":
        words = [_NUMBERS.get(int(w), w) if w.isdigit() and int(w) in _NUMBERS else w
                 for w in words]
    return " ".join(w for w in words if w)


def wer(references: list[str], hypotheses: list[str], language: str = "en") -> float | None:
    """Corpus WER: word edits (substitutions + deletions + insertions) / reference words."""
    import jiwer

    pairs = [(norm(r, language), norm(h, language)) for r, h in zip(references, hypotheses)
             if norm(r, language)]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h if h else "" for _, h in pairs]))


def _decode(path: Path) -> np.ndarray:
    """Any audio file as float32 mono 16 kHz, with PyAV."""
    import av

    out = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32)


def pdf_sentences(limit: int) -> list[str]:
    """Prose sentences of the Debian PDFs, in page order: 8-22 words of letters, commas and
    apostrophes only (no code, paths, numbers or acronyms, which nobody would read aloud the
    way they are written), each once, alternating between the two documents."""
    from pypdf import PdfReader

    per_pdf = []
    for pdf in PDFS:
        found = []
        for page in PdfReader(str(pdf)).pages:
            text = re.sub(r"-\s*\n\s*", "", page.extract_text() or "")
            text = re.sub(r"\s+", " ", text)
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if not 8 <= len(words) <= 22 or not sentence.endswith("."):
                    continue
                if not re.fullmatch(r"[A-Za-z][A-Za-z ,']*\.", sentence):
                    continue
                if any(len(w) > 1 and any(c.isupper() for c in w[1:]) for w in words):
                    continue  # acronyms and identifiers (DER, localName)
                if sentence not in found and " ." not in sentence:
                    found.append(sentence)
        per_pdf.append(found)
    mixed = [s for pair in zip(*per_pdf) for s in pair]
    return mixed[:limit]


def build_corpus(path: Path) -> dict:
    """Make (once) and load the audio: float32 arrays at 16 kHz with their texts."""
    if not path.exists():
        from tests.support.media import synthesize_speech, to_16k

        arrays: dict[str, np.ndarray] = {}
        meta: dict = {"human": [], "noise": [], "english": [], "foreign": [], "sentences": []}
        for wav in sorted(ALSA.glob("*.wav")):
            key = f"human/{wav.stem}"
            arrays[key] = _decode(wav)
            (meta["noise"] if wav.stem == "Noise" else meta["human"]).append(
                {"key": key, "text": "" if wav.stem == "Noise" else wav.stem.replace("_", " ")})
        sentences = pdf_sentences(SENTENCES_PER_VOICE * len(ENGLISH_VOICES))
        gap = np.zeros(int(0.7 * RATE), np.float32)
        for i, (voice, wpm) in enumerate(ENGLISH_VOICES):
            mine = sentences[i * SENTENCES_PER_VOICE:(i + 1) * SENTENCES_PER_VOICE]
            log(f"espeak-ng {voice} at {wpm} wpm: {len(mine)} sentences")
            pieces = [gap]
            for text in mine:
                pieces += [to_16k(synthesize_speech(text, voice=voice, words_per_minute=wpm)), gap]
            key = f"english/{voice}-{wpm}"
            arrays[key] = np.concatenate(pieces)
            meta["english"].append({"key": key, "text": " ".join(mine), "voice": voice, "wpm": wpm})
        for language, texts in FOREIGN.items():
            for variant in FOREIGN_VARIANTS:
                voice = language + variant
                clips = [to_16k(synthesize_speech(text, voice=voice)) for text in texts]
                key = f"foreign/{voice}"
                arrays[key] = np.concatenate([gap] + [x for c in clips for x in (c, gap)])
                meta["foreign"].append({"key": key, "text": " ".join(texts), "language": language,
                                        "voice": voice})
                for j, clip in enumerate(clips):
                    arrays[f"{key}-{j}"] = np.concatenate([gap, clip, gap])
                    meta["sentences"].append({"key": f"{key}-{j}", "text": texts[j],
                                              "language": language, "voice": voice})
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k.replace("/", "__"): v for k, v in arrays.items()})
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as data:
        audio = {k.replace("__", "/"): data[k] for k in data.files}
    return {"meta": meta, "audio": audio}


def measure(name: str, corpus_path: Path) -> dict:
    """One configuration, in this process: load, warm up, transcribe every recording."""
    from narra_dagster.resources import FasterWhisperTranscriber

    corpus = build_corpus(corpus_path)
    meta, audio = corpus["meta"], corpus["audio"]
    model = FasterWhisperTranscriber(**CONFIGS[name])
    started = time.perf_counter()
    path = model.resolved_model_path()
    model._ensure_loaded()
    load_s = time.perf_counter() - started
    model.transcribe(audio[meta["english"][0]["key"]][: 2 * RATE])  # first call sets up the decoder

    def run(items):
        out = []
        for item in items:
            t, c = time.perf_counter(), time.process_time()
            transcript = model.transcribe_blocks([(0.0, audio[item["key"]])])
            out.append({**item, "hypothesis": transcript.text, "language_detected": transcript.language,
                        "language_probability": transcript.language_probability,
                        "audio_s": round(len(audio[item["key"]]) / RATE, 3),
                        "seconds": round(time.perf_counter() - t, 3),
                        "cpu_s": round(time.process_time() - c, 3)})
        return out

    detects = model.language is None
    # Foreign speech only where the language is detected: decoded as English it is nonsense,
    # and slow (temperature fallbacks), which says nothing about the model.
    groups = {g: run(meta[g]) for g in ("human", "noise", "english", "foreign")
              if detects or g != "foreign"}
    groups.setdefault("foreign", [])
    english_s = sum(r["audio_s"] for r in groups["english"])
    english_wall = sum(r["seconds"] for r in groups["english"])
    spoken = ([(r["language"], r["language_detected"]) for r in groups["foreign"]]
              + [("en", r["language_detected"]) for r in groups["english"]])
    # Single sentences (3-6 s): the language detector alone (one encoder pass on the first 30 s).
    short = []
    if detects:
        for item in meta["sentences"] + [{**h, "language": "en"} for h in meta["human"]]:
            language, probability, _ = model._model.detect_language(audio[item["key"]])
            short.append({**item, "language_detected": language,
                          "language_probability": round(float(probability), 3)})
    foreign_wer = {lang: wer([r["text"] for r in groups["foreign"] if r["language"] == lang],
                             [r["hypothesis"] for r in groups["foreign"] if r["language"] == lang],
                             lang)
                   for lang in FOREIGN} if detects else {}
    import resource

    return {
        "config": name, "settings": CONFIGS[name], "model_name": model.model_name,
        "model_path": str(path), "threads": model.threads, "load_s": round(load_s, 2),
        "wer_human": wer([r["text"] for r in groups["human"]], [r["hypothesis"] for r in groups["human"]]),
        "human_words": sum(len(norm(r["text"]).split()) for r in groups["human"]),
        "invented_words_on_noise": sum(len(norm(r["hypothesis"]).split()) for r in groups["noise"]),
        "wer_synth_en": wer([r["text"] for r in groups["english"]], [r["hypothesis"] for r in groups["english"]]),
        "synth_en_words": sum(len(norm(r["text"]).split()) for r in groups["english"]),
        "synth_en_audio_s": round(english_s, 1),
        "rtf": round(english_wall / english_s, 4),
        "cpu_per_audio_s": round(sum(r["cpu_s"] for r in groups["english"]) / english_s, 4),
        "wer_synth_en_per_voice": {f"{r['voice']}@{r['wpm']}": wer([r["text"]], [r["hypothesis"]])
                                   for r in groups["english"]},
        "language_accuracy": (sum(a == b for a, b in spoken) / len(spoken)) if detects else None,
        "language_accuracy_by_language": {
            lang: sum(b == lang for a, b in spoken if a == lang) / sum(a == lang for a, _ in spoken)
            for lang in ["en", *FOREIGN]} if detects else None,
        "language_clips": len(spoken) if detects else 0,
        "language_accuracy_short": (sum(r["language"] == r["language_detected"] for r in short)
                                    / len(short)) if detects else None,
        "language_accuracy_short_by_language": {
            lang: sum(r["language_detected"] == lang for r in short if r["language"] == lang)
            / sum(r["language"] == lang for r in short) for lang in ["en", *FOREIGN]}
        if detects else None,
        "language_short": short,
        "wer_foreign_auto": foreign_wer,
        "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "results": groups,
    }


def run_all(work: Path, configs: list[str]) -> dict:
    """Each configuration in its own process (``--config NAME``), measured by ``run_measured``."""
    corpus_path = work / "corpus.npz"
    log("building the ASR corpus (once)")
    build_corpus(corpus_path)
    env = dict(os.environ)
    env.update(NARRA_HOME=str(work / "home"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    rows = []
    for name in configs:
        log(f"asr: {name}")
        measured = run_measured([sys.executable, "-m", "bench.asr", "--config", name,
                                 "--work", str(work.parent)], env)
        if measured.returncode != 0:
            rows.append({"config": name, "error": measured.stderr[-2000:]})
            log(f"asr: {name} failed: {measured.stderr[-500:]}")
            continue
        row = json.loads(measured.stdout.strip().splitlines()[-1])
        row["peak_rss_mb"] = round(measured.peak_rss_bytes / 2**20)
        row["process_wall_s"] = round(measured.wall_s, 1)
        rows.append(row)
    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "runs": rows}


def print_table(results: dict) -> None:
    runs = [r for r in results["runs"] if "error" not in r]
    if not runs:
        print("no configuration ran:", [r.get("error", "")[-300:] for r in results["runs"]])
        return
    first = runs[0]
    print(f"\nWhisper on {results['cpus']} cores (int8): human voice = alsa-utils, "
          f"{first['human_words']} words; synthesized = espeak-ng, {first['synth_en_words']} words, "
          f"{first['synth_en_audio_s']:.0f} s; RTF and CPU s/s on the synthesized English")
    head = (f"{'config':<16} {'WER human':>9} {'noise words':>11} {'WER synth':>9} {'RTF':>6} "
            f"{'CPU s/s':>7} {'lang 20 s':>9} {'lang 5 s':>8} {'WER de/es/fr':>14} {'load s':>6} "
            f"{'peak MB':>7}")
    print(head)
    for r in runs:
        fw = r["wer_foreign_auto"]
        foreign = "/".join(f"{fw[k]:.2f}" for k in FOREIGN) if fw else "-"
        acc = f"{r['language_accuracy']:.3f}" if r["language_accuracy"] is not None else "-"
        short = (f"{r['language_accuracy_short']:.3f}" if r.get("language_accuracy_short")
                 is not None else "-")
        print(f"{r['config']:<16} {r['wer_human']:>9.3f} {r['invented_words_on_noise']:>11} "
              f"{r['wer_synth_en']:>9.3f} {r['rtf']:>6.3f} {r['cpu_per_audio_s']:>7.3f} {acc:>9} {short:>8} "
              f"{foreign:>14} "
              f"{r['load_s']:>6.2f} {r.get('peak_rss_mb', r['peak_rss_mb_self']):>7}")
    for r in runs:
        if r["language_accuracy"] is not None:
            by = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
            print(f"  {r['config']}: language accuracy by language, 20 s "
                  f"{by(r['language_accuracy_by_language'])}; 5 s "
                  f"{by(r['language_accuracy_short_by_language'])}")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['config']:<16} error: {r['error'].strip().splitlines()[-1][:100]}")
    print(f"load average at start {results['load_avg'][0]:.1f} (figures are only comparable on "
          "a quiet machine)")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.asr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--out", default="bench-asr.json")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    p.add_argument("--config", help=argparse.SUPPRESS)  # one configuration, in this process
    args = p.parse_args()
    work = Path(args.work) / "asr"
    if args.config:
        print(json.dumps(measure(args.config, work / "corpus.npz"), ensure_ascii=False))
        return 0
    results = run_all(work, args.configs.split(","))
    print_table(results)
    Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

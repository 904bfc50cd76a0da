"""Shared fixtures: real models (loaded once per session), real media, real stores."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from tests.support.chains import video_assets
from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.resources import (
    FasterWhisperTranscriber,
    LanceSearchIndex,
    LocalMediaStore,
    OnnxImageClassifier,
    OnnxTextEmbedder,
    RapidOcrEngine,
)
from tests.support.media import make_talking_video
from narra_dagster.resources.inbox import LocalInbox

REPO = Path(__file__).resolve().parents[1]
SAMPLE_VIDEO = REPO / "samples" / "sample_video.mp4"

# Plain sentences with known text; the photos are scikit-image's.
SPEECH_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fresh cup of coffee is waiting on the kitchen table.",
    "Please remember to water the garden every morning.",
    "A rocket launches from the coast with a bright trail of fire.",
]
SPEECH_PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]


def pytest_collection_modifyitems(config, items):
    if shutil.which("espeak-ng") is None:
        skip = pytest.mark.skip(reason="espeak-ng is not installed (apt-get install espeak-ng)")
        for item in items:
            if "speech_video" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def speech_video(tmp_path_factory) -> tuple[Path, list]:
    """An MP4 of espeak-ng speech over real photos, and when each sentence is spoken."""
    path = tmp_path_factory.mktemp("media") / "speech.mp4"
    timeline = make_talking_video(path, SPEECH_SENTENCES, SPEECH_PHOTOS)
    return path, timeline


@pytest.fixture(scope="session")
def silent_clip() -> Path:
    """The 10 s silent H.264 clip shipped inside dagster-webserver's web app."""
    spec = importlib.util.find_spec("dagster_webserver")
    path = Path(spec.origin).parent / "webapp" / "build" / "Dagster_world.mp4"
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def transcriber() -> FasterWhisperTranscriber:
    model = FasterWhisperTranscriber()
    model._ensure_loaded()
    return model


@pytest.fixture(scope="session")
def embedder() -> OnnxTextEmbedder:
    model = OnnxTextEmbedder()
    model._ensure_loaded()
    return model


@pytest.fixture(scope="session")
def ocr() -> RapidOcrEngine:
    engine = RapidOcrEngine()
    engine._load()
    return engine


@pytest.fixture(scope="session")
def image_classifier(tmp_path_factory) -> OnnxImageClassifier:
    """EfficientNet-Lite0 exported once per session from the shipped weights, loaded once."""
    from narra_dagster.resources.recognizer import MODEL_FILE, ensure_default_model

    path, _ = ensure_default_model(tmp_path_factory.mktemp("models") / MODEL_FILE)
    model = OnnxImageClassifier(model_path=str(path))
    model._ensure_loaded()
    return model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh NARRA_HOME (and DAGSTER_HOME inside it) for the test."""
    monkeypatch.setenv("NARRA_HOME", str(tmp_path / "narra"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "narra" / "dagster"))
    return tmp_path / "narra"


@pytest.fixture
def resources(home, transcriber, embedder) -> dict:
    return {
        "media_store": LocalMediaStore(root=str(home / "media")),
        "transcriber": transcriber,
        "embedder": embedder,
        "search_index": LanceSearchIndex(uri=str(home / "index")),
        "inbox": LocalInbox(path=str(home / "inbox"), stable_seconds=0.0),
    }


@pytest.fixture
def defs(home, embedder, ocr, image_classifier):
    """The whole platform's definitions on this test's home, with the session's models: every
    kind, both LanceDB indexes, the inbox (settled at once) and a JSON-lines event sink."""
    from narra_dagster.definitions import build_defs
    from narra_dagster.resources import LanceImageIndex
    from narra_dagster.resources.events import JsonlEventSink

    return build_defs({
        "media_store": LocalMediaStore(root=str(home / "media")),
        "embedder": embedder, "ocr": ocr, "image_classifier": image_classifier,
        "search_index": LanceSearchIndex(uri=str(home / "index")),
        "image_index": LanceImageIndex(uri=str(home / "index")),
        "inbox": LocalInbox(path=str(home / "inbox"), stable_seconds=0.0),
        "event_sink": JsonlEventSink(path=str(home / "events.jsonl")),
    })


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def ingest_and_materialize(path: Path, resources: dict, instance: dg.DagsterInstance):
    """Store a file, add its partition, materialize the video chain; return (key, result)."""
    upload = store_upload(path, resources["media_store"])
    if not instance.has_dynamic_partition("videos", upload.partition_key):
        instance.add_dynamic_partitions("videos", [upload.partition_key])
    result = dg.materialize(
        video_assets,
        partition_key=upload.partition_key,
        resources={k: v for k, v in resources.items() if k != "inbox"},
        instance=instance,
        raise_on_error=False,
    )
    return upload.partition_key, result


def materialization_metadata(result, asset: str) -> dict:
    """The metadata values of ``asset``'s one materialization in an execution result."""
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check_outcomes(result) -> dict[str, bool]:
    """Check name -> passed, for the asset checks evaluated in an execution result."""
    return {e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def subprocess_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NARRA_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    return env

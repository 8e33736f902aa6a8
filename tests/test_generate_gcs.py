"""`eval generate` with a gs:// model, gs:// data and gs:// predictions (the GCS emulator): the same
predictions as a local run, the model copied once into the local model cache (a changed object
makes a new copy), and a gs:// model path with no objects as a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parsetune import storage
from parsetune.errors import UserError
from test_generate import _write_split

SETTINGS = {"batch_size": 4, "max_new_tokens": 12, "progress": False}


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch) -> Path:
    """The model cache in a tmp dir, no compilation cache: nothing goes to ~/.cache."""
    monkeypatch.setenv("PARSETUNE_MODEL_CACHE", str(tmp_path / "model-cache"))
    monkeypatch.setenv("PARSETUNE_COMPILATION_CACHE", "off")
    return tmp_path / "model-cache"


def upload_dir(bucket, local: Path, prefix: str) -> str:
    """Every file below ``local`` as an object below ``prefix``; returns the gs:// URL of the prefix."""
    for f in sorted(local.rglob("*")):
        if f.is_file():
            bucket.blob(f"{prefix}/{f.relative_to(local).as_posix()}").upload_from_filename(str(f))
    return f"gs://{bucket.name}/{prefix}"


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def cache_entries(cache: Path) -> list[Path]:
    """The model copies in the cache (staging dirs of unfinished copies are ``.download-*``)."""
    return sorted(cache.iterdir()) if cache.exists() else []


@pytest.fixture
def model_reads(monkeypatch):
    """gs:// paths read through parsetune.storage, in order."""
    reads: list[str] = []
    real = storage.read_bytes

    def recording(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(storage, "read_bytes", recording)
    return reads


def test_gcs_model_data_and_predictions_equal_a_local_run_and_the_copy_is_reused(
    gcs_bucket, tiny_model_dir, tmp_path, caches, model_reads
):
    from eval.generate import generate_predictions

    data = _write_split(tmp_path / "validation.jsonl")
    local_out = tmp_path / "local-predictions.jsonl"
    generate_predictions(str(tiny_model_dir), str(data), str(local_out), **SETTINGS)

    model = upload_dir(gcs_bucket, tiny_model_dir, "models/tiny")
    gcs_bucket.blob("models/tiny/").upload_from_string(b"")  # a "folder" placeholder, as the console makes
    gcs_bucket.blob("data/validation.jsonl").upload_from_filename(str(data))
    gcs_data = f"gs://{gcs_bucket.name}/data/validation.jsonl"
    model_files = files_of(tiny_model_dir)

    model_reads.clear()
    stats = generate_predictions(model, gcs_data, f"gs://{gcs_bucket.name}/eval/predictions.jsonl", **SETTINGS)
    assert stats.n == 6
    remote = gcs_bucket.blob("eval/predictions.jsonl").download_as_bytes()
    expected = local_out.read_bytes()
    assert [json.loads(line) for line in remote.decode().splitlines()] == [json.loads(line) for line in expected.decode().splitlines()]
    assert remote == expected  # same rows, same text, byte for byte
    downloaded = [p for p in model_reads if p.startswith(model + "/")]
    assert set(downloaded) == {f"{model}/{name}" for name in model_files}  # (config.json is read twice: the family check first)
    assert downloaded.count(f"{model}/model.safetensors") == 1

    (copy,) = cache_entries(caches)  # exactly one complete copy, nothing left staging
    assert (copy / ".complete").is_file()
    assert {k: v for k, v in files_of(copy).items() if k != ".complete"} == model_files
    stamp = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}

    model_reads.clear()
    generate_predictions(model, gcs_data, f"gs://{gcs_bucket.name}/eval/again.jsonl", **SETTINGS)
    assert gcs_bucket.blob("eval/again.jsonl").download_as_bytes() == expected
    assert [p for p in model_reads if p.startswith(model + "/")] == [f"{model}/config.json"], "only the family check; no second download"
    assert cache_entries(caches) == [copy]
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == stamp


def test_a_changed_object_makes_a_new_copy(gcs_bucket, tiny_model_dir, caches):
    from eval.model_cache import local_model_dir

    model = upload_dir(gcs_bucket, tiny_model_dir, "models/tiny")
    first = local_model_dir(model)
    assert local_model_dir(model + "/") == first  # unchanged objects: the same copy
    changed = json.loads((tiny_model_dir / "generation_config.json").read_text())
    changed["max_length"] = 77
    gcs_bucket.blob("models/tiny/generation_config.json").upload_from_string(json.dumps(changed))

    second = local_model_dir(model)
    assert second != first
    assert cache_entries(caches) == sorted([Path(first), Path(second)])
    assert json.loads(Path(second, "generation_config.json").read_text())["max_length"] == 77
    assert Path(first, "generation_config.json").read_bytes() == (tiny_model_dir / "generation_config.json").read_bytes()
    assert all(Path(d, ".complete").is_file() for d in (first, second))

    gcs_bucket.blob("models/tiny/config.json").upload_from_filename(str(tiny_model_dir / "config.json"))  # same bytes, new generation
    assert local_model_dir(model) not in (first, second)


def test_gcs_model_path_without_objects_is_a_one_line_error(gcs_bucket, tiny_model_dir, tmp_path, caches):
    from eval.generate import generate_predictions
    from eval.model_cache import local_model_dir

    upload_dir(gcs_bucket, tiny_model_dir, "models/tiny")  # a sibling whose name starts the same
    gcs_bucket.blob("data/validation.jsonl").upload_from_filename(str(_write_split(tmp_path / "validation.jsonl")))
    before = {b.name for b in gcs_bucket.client.list_blobs(gcs_bucket.name)}
    missing = f"gs://{gcs_bucket.name}/models/tin"
    out = f"gs://{gcs_bucket.name}/eval/predictions.jsonl"

    with pytest.raises(UserError) as err:
        generate_predictions(missing, f"gs://{gcs_bucket.name}/data/validation.jsonl", out, **SETTINGS)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{missing}: no config.json")
    with pytest.raises(UserError, match=f"^{missing}: no such checkpoint \\(no objects under it\\)$"):
        local_model_dir(missing)

    assert {b.name for b in gcs_bucket.client.list_blobs(gcs_bucket.name)} == before
    assert cache_entries(caches) == []


def test_a_copy_that_fails_half_way_leaves_nothing_in_the_cache(gcs_bucket, tiny_model_dir, caches, monkeypatch):
    from eval.model_cache import local_model_dir

    model = upload_dir(gcs_bucket, tiny_model_dir, "models/tiny")
    real = storage.read_bytes
    reads = []

    def fails_on_the_third(path):
        reads.append(path)
        if len(reads) == 3:
            raise UserError(f"{path}: cannot access (connection reset)")
        return real(path)

    monkeypatch.setattr(storage, "read_bytes", fails_on_the_third)
    with pytest.raises(UserError, match="connection reset"):
        local_model_dir(model)
    assert cache_entries(caches) == []  # no half copy, no staging dir

    monkeypatch.setattr(storage, "read_bytes", real)
    copy = Path(local_model_dir(model))
    assert cache_entries(caches) == [copy] and {k for k in files_of(copy) if k != ".complete"} == set(files_of(tiny_model_dir))

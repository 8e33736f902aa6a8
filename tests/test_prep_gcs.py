"""prep writes to gs:// for real: a GCS emulator on 127.0.0.1, read back with google-cloud-storage."""

from __future__ import annotations

import hashlib
import json
import time

from conftest import ASSETS, run_cli


def train_copy(tmp_path):
    """The 50 validation rows under another name: prep refuses one file as two splits."""
    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    return train


def test_viggo_to_gcs_writes_splits_and_manifest(gcs_bucket, tmp_path):
    dest = f"gs://{gcs_bucket.name}/data/viggo"
    validation = ASSETS / "viggo_validation_50.jsonl"
    result = run_cli("prep", "viggo", "--train", str(train_copy(tmp_path)), "--validation", str(validation), "--out", dest)
    assert result.returncode == 0, result.stderr

    blobs = {b.name: b.download_as_bytes() for b in gcs_bucket.client.list_blobs(gcs_bucket.name)}
    assert set(blobs) == {"data/viggo/train.jsonl", "data/viggo/validation.jsonl", "data/viggo/manifest.json"}
    manifest = json.loads(blobs["data/viggo/manifest.json"])
    for split, info in manifest["splits"].items():
        data = blobs[f"data/viggo/{info['file']}"]
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["rows"] == len(data.splitlines()) == 50
    records = [json.loads(line) for line in blobs["data/viggo/validation.jsonl"].splitlines()]
    source = [json.loads(line) for line in validation.read_text().splitlines()]
    assert [r["output"] for r in records] == [s["meaning_representation"] for s in source]


def test_broken_row_leaves_no_object_in_the_bucket(gcs_bucket, tmp_path):
    validation = ASSETS / "viggo_validation_50.jsonl"
    bad = tmp_path / "test.csv"
    bad.write_text('mr,ref\n"inform(name[X])",ok\n"yell(name[X])",bad\n', encoding="utf-8")
    result = run_cli("prep", "viggo", "--train", str(train_copy(tmp_path)), "--validation", str(validation), "--test", str(bad), "--out", f"gs://{gcs_bucket.name}/d")
    assert result.returncode == 2
    assert f"{bad}:3:" in result.stderr
    assert list(gcs_bucket.client.list_blobs(gcs_bucket.name)) == []


def test_gcs_source_file_is_read(gcs_bucket, tmp_path):
    validation = ASSETS / "viggo_validation_50.jsonl"
    gcs_bucket.blob("raw/validation.jsonl").upload_from_filename(str(validation))
    gcs_bucket.blob("raw/train.jsonl").upload_from_filename(str(validation))
    out = tmp_path / "out"
    src = f"gs://{gcs_bucket.name}/raw/"
    result = run_cli("prep", "viggo", "--train", src + "train.jsonl", "--validation", src + "validation.jsonl", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len((out / "train.jsonl").read_text().splitlines()) == 50


def test_unreachable_gcs_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # discard port: nothing listens
    validation = ASSETS / "viggo_validation_50.jsonl"
    start = time.monotonic()
    result = run_cli("prep", "viggo", "--train", str(train_copy(tmp_path)), "--validation", str(validation), "--out", "gs://bucket/x")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot reach GCS at 127.0.0.1:9" in result.stderr
    assert time.monotonic() - start < 30  # not gcsfs's minutes of retries


def test_missing_bucket_is_reported(gcs_emulator, monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    validation = ASSETS / "viggo_validation_50.jsonl"
    result = run_cli("prep", "viggo", "--train", str(train_copy(tmp_path)), "--validation", str(validation), "--out", "gs://no-such-bucket-here/x")
    assert result.returncode == 2
    assert "gs://no-such-bucket-here: no such bucket" in result.stderr and result.stderr.count("\n") == 1

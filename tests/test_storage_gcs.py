"""parsetune.storage on gs:// with google-cloud-storage, against the GCS emulator (tests/gcs_emulator.py):
create-only and generation-conditional writes, checksums, one-line errors, a killed upload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from parsetune import storage
from parsetune.errors import UserError


def test_create_only_never_overwrites(gcs_bucket):
    path = f"gs://{gcs_bucket.name}/a/manifest.json"
    first = storage.create_bytes(path, b"first")
    assert isinstance(first, int) and storage.generation(path) == first
    with pytest.raises(UserError, match=f"^{path}: already exists; nothing was overwritten$"):
        storage.create_bytes(path, b"second")
    assert storage.read_bytes(path) == b"first"


def test_replacing_needs_the_generation_last_seen(gcs_bucket):
    path = f"gs://{gcs_bucket.name}/metrics.jsonl"
    mine = storage.write_bytes_atomic(path, b"1\n")
    theirs = storage.write_bytes_atomic(path, b"other run\n")  # a plain overwrite, e.g. another host
    with pytest.raises(UserError, match="was written by someone else meanwhile"):
        storage.write_bytes_atomic(path, b"1\n2\n", if_generation_match=mine)
    assert storage.read_bytes(path) == b"other run\n"
    newer = storage.write_bytes_atomic(path, b"1\n2\n", if_generation_match=theirs)
    assert newer != theirs and storage.read_bytes(path) == b"1\n2\n"
    with pytest.raises(UserError, match="generation precondition failed"):
        storage.delete(path, if_generation_match=theirs)
    storage.delete(path, if_generation_match=newer)
    assert not storage.exists(path) and storage.generation(path) is None


def test_uploads_carry_their_checksum(gcs_bucket):
    data = os.urandom(3 * storage.CHUNK_BYTES // 2)  # above the chunk size: a resumable upload
    path = f"gs://{gcs_bucket.name}/big.bin"
    storage.write_bytes_atomic(path, data)
    blob = gcs_bucket.get_blob("big.bin")
    assert blob.crc32c == storage._crc32c(data) and blob.download_as_bytes() == data


def test_missing_bucket_and_object_are_one_line_errors(gcs_emulator, monkeypatch, gcs_bucket):
    with pytest.raises(UserError, match=r"^gs://no-such-bucket-x: no such bucket \(writing gs://no-such-bucket-x/f\)$"):
        storage.write_bytes_atomic("gs://no-such-bucket-x/f", b"x")
    with pytest.raises(UserError, match=r"^gs://no-such-bucket-x: no such bucket \(reading gs://no-such-bucket-x/f\)$"):
        storage.read_bytes("gs://no-such-bucket-x/f")
    with pytest.raises(UserError, match=f"^gs://{gcs_bucket.name}/nothing: no such object$"):
        storage.read_bytes(f"gs://{gcs_bucket.name}/nothing")


KILLED_UPLOAD = textwrap.dedent(
    """
    import os, signal, sys
    from google.cloud.storage._media.requests import upload
    from parsetune import storage

    real = upload.ResumableUpload.transmit_next_chunk

    def first_chunk_then_die(self, *args, **kwargs):
        response = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the host dies half-way through the upload
        return response

    upload.ResumableUpload.transmit_next_chunk = first_chunk_then_die
    storage.write_bytes_atomic(sys.argv[1], b"new" * storage.CHUNK_BYTES)  # 3 chunks
    """
)


@pytest.mark.parametrize("existing", [None, b"old data"])
def test_an_upload_killed_half_way_leaves_no_object_or_the_old_one(gcs_bucket, existing):
    path = f"gs://{gcs_bucket.name}/prep/train.jsonl"
    if existing:
        storage.write_bytes_atomic(path, existing)
    child = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, path], cwd=REPO, env=os.environ.copy(), capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if existing:
        assert storage.read_bytes(path) == existing
    else:
        assert not storage.exists(path)

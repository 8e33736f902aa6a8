"""Reading and atomically writing files at local paths or ``gs://bucket/prefix`` URLs.

Local files are written to a temporary name in the same directory and renamed into place.
GCS objects are uploaded in one request (an object only becomes visible once its upload
completes), so a reader never sees half an object. ``gs://`` goes through gcsfs, which honours
``STORAGE_EMULATOR_HOST`` (the tests point it at a local emulator).

Errors that are the user's to fix (missing file, unreachable bucket, no credentials) are raised as
:class:`parsetune.errors.UserError` with one line naming the path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator

from parsetune.errors import UserError

GCS_PREFIX = "gs://"


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_PREFIX)


def join(base: str, *names: str) -> str:
    """Join path parts; works for local paths and gs:// URLs alike."""
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])
    return os.path.join(base, *names)


def gcs_endpoint() -> str:
    """The GCS endpoint in use: the emulator's when ``STORAGE_EMULATOR_HOST`` is set."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


@functools.lru_cache(maxsize=None)
def _check_reachable(endpoint: str) -> None:
    """Fail in seconds, not after gcsfs's ~30 s of retries, when the endpoint cannot be reached."""
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as err:
        raise UserError(f"cannot reach GCS at {url.hostname}:{port} ({err}); check the network or STORAGE_EMULATOR_HOST") from err


def _gcs_filesystem():
    import gcsfs  # imported lazily: local-only runs never need it

    _check_reachable(gcs_endpoint())
    # gcsfs logs a full traceback for every failed request; we report one line instead
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    return gcsfs.GCSFileSystem(timeout=60)


def _gcs_error(path: str, err: BaseException) -> UserError:
    name = type(err).__name__
    text = str(err).splitlines()[0] if str(err) else name
    hint = ""
    if "credential" in text.lower() or "auth" in name.lower() or "401" in text or "403" in text:
        hint = " (check `gcloud auth application-default login` or GOOGLE_APPLICATION_CREDENTIALS)"
    elif "connect" in text.lower() or "timeout" in text.lower() or "resolve" in text.lower():
        hint = " (is GCS reachable from here? STORAGE_EMULATOR_HOST=%s)" % os.environ.get(
            "STORAGE_EMULATOR_HOST", "unset"
        )
    return UserError(f"cannot access {path}: {name}: {text}{hint}")


@contextlib.contextmanager
def _gcs_errors(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such object (or its bucket does not exist)") from err
    except UserError:
        raise
    except Exception as err:  # gcsfs/aiohttp/google-auth raise many unrelated types
        raise _gcs_error(path, err) from err


def check_output_dir(path: str) -> None:
    """``UserError`` if ``path`` exists locally as something other than a directory (creates nothing)."""
    if not is_gcs(path) and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: exists and is not a directory")


def exists(path: str) -> bool:
    if is_gcs(path):
        with _gcs_errors(path):
            return _gcs_filesystem().exists(path)
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        with _gcs_errors(path):
            return _gcs_filesystem().cat_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise UserError(f"{path}: is a directory, expected a file") from err


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from err


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` either holds all of it or is left as it was."""
    if is_gcs(path):
        with _gcs_errors(path):
            _gcs_filesystem().pipe_file(path, data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def delete(path: str) -> None:
    """Remove a file or object if it exists."""
    if is_gcs(path):
        with _gcs_errors(path):
            fs = _gcs_filesystem()
            if fs.exists(path):
                fs.rm_file(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class AllOrNothingWriter:
    """Writes a group of files; if the group fails part-way, the files it wrote are removed.

    Use as a context manager: every ``write`` is atomic on its own, and an exception inside the
    ``with`` block deletes what this writer already wrote, so a failed run leaves nothing behind.
    """

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_bytes(self, path: str, data: bytes) -> None:
        write_bytes_atomic(path, data)
        self.written.append(path)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def __enter__(self) -> "AllOrNothingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        for path in reversed(self.written):
            with contextlib.suppress(Exception):
                delete(path)

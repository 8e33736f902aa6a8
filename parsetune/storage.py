"""Reading and atomically writing files at local paths or ``gs://bucket/prefix`` URLs.

Local files are written to a temporary name in the same directory (``.NAME.PID-XXXX.tmp``) and
renamed into place; temporary files left by a killed process are removed by the next write of the
same name (their process is gone).

``gs://`` objects go through ``google-cloud-storage`` (``STORAGE_EMULATOR_HOST`` points it at an
emulator). An object only becomes visible once its upload completes, so a reader never sees half
an object; every upload sends its CRC32C, which GCS checks before it creates the object, and the
checksum GCS reports back is compared again. Writes take a generation precondition
(``if_generation_match``): ``0`` creates only (``create_bytes``), a number replaces exactly that
generation. ``write_bytes_atomic`` without one overwrites: right for a file that one writer owns
and rewrites whole (a report, a score file); a writer that may race another (two hosts, two runs)
passes the generation it last wrote or read and gets a ``UserError`` instead of a silent overwrite.
Levanter's own files (checkpoints, caches) stay on fsspec/tensorstore.

Errors that are the user's to fix (missing file or bucket, no permission, no credentials, an
unwritable directory) are raised as :class:`parsetune.errors.UserError` with one line naming the path.

Every gs:// call is bounded in time: an endpoint that accepts connections and never answers fails
after ``PARSETUNE_GCS_TIMEOUT`` seconds (default 60), not after the client's minutes of retries.
Each request gets that timeout and the retries share it (a request started just before the budget
runs out may take one more timeout).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from parsetune.errors import UserError
from parsetune.gcs_limits import CONNECT_TIMEOUT_S, TIMEOUT_ENV, bounded as _bounded, timed_out as _timed_out, timeout_s

GCS_PREFIX = "gs://"
CHUNK_BYTES = 8 * 1024 * 1024  # uploads above this go in resumable chunks of this size


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


# ----------------------------------------------------------------------------------------- GCS


def split_gcs(path: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, name = path[len(GCS_PREFIX) :].partition("/")
    if not bucket:
        raise UserError(f"{path}: no bucket name in the gs:// URL")
    return bucket, name


@functools.lru_cache(maxsize=None)
def _check_reachable(endpoint: str) -> None:
    """Fail in seconds, not after the client's minutes of retries, when the endpoint cannot be reached."""
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=min(CONNECT_TIMEOUT_S, timeout_s())).close()
    except OSError as err:
        raise UserError(f"cannot reach GCS at {url.hostname}:{port} ({err}); check the network or STORAGE_EMULATOR_HOST") from err


@functools.lru_cache(maxsize=None)
def _client_for(endpoint: str, emulated: bool):
    from google.cloud import storage as gcs  # imported lazily: local-only runs never need it

    if emulated:
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project="parsetune", credentials=AnonymousCredentials())
    return gcs.Client()


def _client():
    endpoint = gcs_endpoint()
    _check_reachable(endpoint)
    try:
        return _client_for(endpoint, "STORAGE_EMULATOR_HOST" in os.environ)
    except Exception as err:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise UserError(f"no Google Cloud credentials for gs:// ({_first_line(err)}); run `gcloud auth application-default login`") from err


def _blob(path: str, chunked: bool = False):
    bucket, name = split_gcs(path)
    if not name:
        raise UserError(f"{path}: expected an object path below the bucket")
    return _client().bucket(bucket).blob(name, chunk_size=CHUNK_BYTES if chunked else None)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def _gcs_errors(path: str, writing: bool = False) -> Iterator[None]:
    from google.api_core import exceptions as api

    try:
        yield
    except UserError:
        raise
    except api.NotFound as err:
        bucket, _ = split_gcs(path)
        if not _bucket_exists(bucket):
            raise UserError(f"gs://{bucket}: no such bucket ({'writing' if writing else 'reading'} {path})") from err
        raise UserError(f"{path}: no such object") from err
    except api.PreconditionFailed as err:
        raise UserError(f"{path}: was written by someone else meanwhile (generation precondition failed); nothing was overwritten") from err
    except (api.Forbidden, api.Unauthorized) as err:
        raise UserError(
            f"{path}: permission denied ({_first_line(err)}); check `gcloud auth application-default login`, "
            "GOOGLE_APPLICATION_CREDENTIALS and the bucket's IAM roles"
        ) from err
    except Exception as err:  # google-api-core, google-auth, requests raise many unrelated types
        name = type(err).__name__
        hint = ""
        if "auth" in name.lower() or "credential" in str(err).lower():
            hint = " (check `gcloud auth application-default login` or GOOGLE_APPLICATION_CREDENTIALS)"
        elif _timed_out(err):
            raise UserError(
                f"cannot access {path}: GCS at {gcs_endpoint()} did not answer within {timeout_s():g} s "
                f"(check the network or STORAGE_EMULATOR_HOST; {TIMEOUT_ENV} sets the limit)"
            ) from err
        elif "connect" in str(err).lower():
            hint = f" (is GCS reachable from here? STORAGE_EMULATOR_HOST={os.environ.get('STORAGE_EMULATOR_HOST', 'unset')})"
        raise UserError(f"cannot access {path}: {name}: {_first_line(err)}{hint}") from err


def _bucket_exists(bucket: str) -> bool:
    try:
        return _client().bucket(bucket).exists(**_bounded())
    except Exception:  # no permission to look: assume it is there, report the object
        return True


def _crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def _upload(path: str, data: bytes, if_generation_match: int | None) -> int:
    blob = _blob(path, chunked=len(data) > CHUNK_BYTES)
    from google.api_core.exceptions import PreconditionFailed

    with _gcs_errors(path, writing=True):
        try:
            # checksum: the client sends the CRC32C along and GCS refuses a body that does not match it
            blob.upload_from_string(data, if_generation_match=if_generation_match, checksum="crc32c", **_bounded())
        except PreconditionFailed as err:
            if if_generation_match == 0:
                raise UserError(f"{path}: already exists; nothing was overwritten") from err
            raise
    if blob.crc32c != _crc32c(data):
        raise UserError(f"{path}: upload corrupted (CRC32C {blob.crc32c} from GCS, {_crc32c(data)} sent)")
    return int(blob.generation)


@dataclass(frozen=True)
class ObjectInfo:
    path: str  # gs://bucket/name
    generation: int
    age_s: float  # seconds since the object was last written


def list_objects(prefix: str) -> list[ObjectInfo]:
    """Every object whose gs:// path starts with ``prefix``."""
    import datetime as dt

    bucket, name = split_gcs(prefix)
    now = dt.datetime.now(dt.timezone.utc)
    with _gcs_errors(prefix):
        return [
            ObjectInfo(f"gs://{bucket}/{b.name}", int(b.generation), (now - b.updated).total_seconds())
            for b in _client().list_blobs(bucket, prefix=name, **_bounded())
        ]


def copy_object(source: str, dest: str, if_generation_match: int | None = None) -> int:
    """Server-side copy of one gs:// object to another; returns the new generation."""
    src = _blob(source)
    bucket, name = split_gcs(dest)
    with _gcs_errors(dest, writing=True):
        copied = src.bucket.copy_blob(src, _client().bucket(bucket), name, if_generation_match=if_generation_match, **_bounded(conditional=True))
    return int(copied.generation)


def generation(path: str) -> int | None:
    """The current generation of a gs:// object, None if there is none."""
    blob = _blob(path)
    from google.api_core.exceptions import NotFound

    with _gcs_errors(path):
        try:
            blob.reload(**_bounded())
        except NotFound:
            return None
    return int(blob.generation)


# -------------------------------------------------------------------------------------- local


def _local_write_error(path: str, err: OSError) -> UserError:
    return UserError(f"{path}: cannot write ({err.strerror or err})")


def check_output_dir(path: str) -> None:
    """``UserError`` if ``path`` exists locally as something other than a directory (a broken
    symbolic link included), or lies below a file (creates nothing)."""
    if is_gcs(path):
        split_gcs(path)
        return
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"{path}: a broken symbolic link (to {os.readlink(path)}, which does not exist); give a directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{path}: {parent} is a file, not a directory")


def process_is_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(entry_name: str) -> bool:
    """Whether a ``...PID-XXXX...`` temporary name belongs to a process that no longer runs here."""
    match = re.search(r"\.(\d+)-[^./]+(\.tmp)?$", entry_name)
    return bool(match) and not process_is_running(int(match.group(1)))


def remove_stale_tmp(directory: str, name: str) -> None:
    """Remove ``.NAME.PID-XXXX.tmp`` files in ``directory`` left by processes that were killed."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if entry.startswith(f".{name}.") and entry.endswith(".tmp") and owner_is_gone(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, entry))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_local(path: str, data: bytes, create_only: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        os.makedirs(directory, exist_ok=True)
        remove_stale_tmp(directory, name)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}-", suffix=".tmp", dir=directory)
    except OSError as err:
        raise _local_write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if create_only:
            os.link(tmp, path)  # fails if path exists: never replaces
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except FileExistsError as err:
        raise UserError(f"{path}: already exists; nothing was overwritten") from err
    except IsADirectoryError as err:
        raise UserError(f"{path}: is a directory, expected a file") from err
    except OSError as err:
        raise _local_write_error(path, err) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ------------------------------------------------------------------------------------- common


def exists(path: str) -> bool:
    if is_gcs(path):
        blob = _blob(path)
        with _gcs_errors(path):
            return blob.exists(**_bounded())
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        blob = _blob(path)
        with _gcs_errors(path):
            return blob.download_as_bytes(checksum="crc32c", **_bounded())
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise UserError(f"{path}: is a directory, expected a file") from err
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from err


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from err


def write_bytes_atomic(path: str, data: bytes, if_generation_match: int | None = None) -> int | None:
    """Write ``data`` so that ``path`` either holds all of it or is left as it was.

    Replaces an existing file/object. On gs://, ``if_generation_match`` makes the write conditional
    (``0``: only if there is no object yet; ``N``: only if the object is still generation ``N``) and
    the new generation is returned; locally the result is None.
    """
    if is_gcs(path):
        return _upload(path, data, if_generation_match)
    _write_local(path, data, create_only=if_generation_match == 0)
    return None


def create_bytes(path: str, data: bytes) -> int | None:
    """Write ``data`` to ``path`` only if nothing is there yet (``UserError`` otherwise): two runs
    or two hosts never overwrite each other's file."""
    return write_bytes_atomic(path, data, if_generation_match=0)


def write_text_atomic(path: str, text: str, if_generation_match: int | None = None) -> int | None:
    return write_bytes_atomic(path, text.encode("utf-8"), if_generation_match)


def delete(path: str, if_generation_match: int | None = None) -> None:
    """Remove a file or object if it exists (on gs://, only generation ``if_generation_match`` when given)."""
    if is_gcs(path):
        from google.api_core.exceptions import NotFound

        blob = _blob(path)
        with _gcs_errors(path, writing=True):
            with contextlib.suppress(NotFound):
                blob.delete(if_generation_match=if_generation_match, **_bounded())
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise UserError(f"{path}: cannot delete ({err.strerror or err})") from err

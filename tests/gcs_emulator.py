"""``gcp-storage-emulator`` with GCS's generation preconditions, for the tests.

Reads, too, behave as GCS's do where tensorstore (Levanter's checkpoints) relies on it: a download
names the object's generation in ``x-goog-generation``, and ``ifGenerationNotMatch=N`` answers
``304 Not Modified`` when the object is still at generation N. Without these a cached chunk read
twice (two devices of a process reading one replicated shard) fails with "Malformed StorageGeneration".

The stock emulator ignores ``ifGenerationMatch``, so create-only writes and conditional deletes
would pass unchecked. This launcher adds the check the real service makes: a request carrying
``ifGenerationMatch=N`` that would create, replace or delete an object answers
``412 Precondition Failed`` unless the object's live generation is ``N`` (``0``: no live object).
The server handles one request at a time, so check and write do not race.

Run as ``python tests/gcs_emulator.py PORT`` (in memory, 127.0.0.1).
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.storage import Storage


class PreconditionFailed(Exception):
    pass


_expected: list[int | None] = [None]  # ifGenerationMatch of the request being handled


def _check(storage: Storage, bucket: str, name: str, deleting: bool = False) -> None:
    expected = _expected[0]
    if expected is None:
        return
    try:
        live = int(storage.get_file_obj(bucket, name).get("generation") or 0)
    except NotFound:
        if deleting:
            return  # deleting nothing: the handler answers 404, as GCS does
        live = 0
    if live != expected:
        raise PreconditionFailed(f"{bucket}/{name}: generation {live}, required {expected}")


def _guarded(method, deleting: bool = False):
    def wrapper(self, bucket_name, file_name, *args, **kwargs):
        _check(self, bucket_name, file_name, deleting)
        return method(self, bucket_name, file_name, *args, **kwargs)

    return wrapper


Storage.create_file = _guarded(Storage.create_file)
Storage.delete_file = _guarded(Storage.delete_file, deleting=True)
_handle = server.Router.handle


def handle(self, method):
    query = urllib_query(self._request_handler.path)
    _expected[0] = int(query["ifGenerationMatch"][0]) if "ifGenerationMatch" in query else None
    try:
        _handle(self, method)
    except PreconditionFailed as err:
        response = server.Response(self._request_handler)
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": str(err), "errors": [{"reason": "conditionNotMet", "message": str(err)}]}})
        response.close()
    finally:
        _expected[0] = None


def urllib_query(path: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(path).query)


server.Router.handle = handle
_download = objects.download


def download(request, response, storage, *args, **kwargs):
    """The stock download, plus the generation header and ``ifGenerationNotMatch`` (304)."""
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return _download(request, response, storage, *args, **kwargs)
    generation = str(obj.get("generation"))
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    if generation in request.query.get("ifGenerationNotMatch", []):
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # objects.get (``alt=media``) calls it by name
for _regex, _handlers in server.HANDLERS:  # the routing table holds the function itself
    for _method, _handler in list(_handlers.items()):
        if _handler is _download:
            _handlers[_method] = download

if __name__ == "__main__":
    emulator = server.create_server("127.0.0.1", int(sys.argv[1]), in_memory=True)
    emulator.run()

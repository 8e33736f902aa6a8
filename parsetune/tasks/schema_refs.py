"""JSON Schema references resolved offline: a ``$ref`` must point inside the schema, never to the network.

``jsonschema`` fetches a remote ``$ref`` (``https://...``, ``other.json``) by itself, once per
validated value, and fails with a traceback when the host is unreachable. Here nothing is fetched:

- :func:`check_local_refs` is called where a schema is loaded, before any work, and refuses with one
  line every ``$ref`` that does not resolve within the schema itself (``#/$defs/x``, an ``$anchor``,
  a sub-schema's own ``$id``) or the JSON Schema meta-schemas ``jsonschema`` ships;
- :func:`offline_registry` is the registry every validator is built with: its ``retrieve`` refuses,
  so even a reference this check did not see cannot reach the network.
"""

from __future__ import annotations

from typing import Any

from parsetune.errors import UserError

REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


class RemoteRefRefused(Exception):
    """Raised by the offline registry's ``retrieve``: fetching ``uri`` is not allowed."""


def _refuse(uri: str) -> Any:
    raise RemoteRefRefused(f"remote $ref {uri!r} refused: nothing is fetched, only references inside the schema resolve")


def offline_registry() -> Any:
    """A ``referencing`` registry with the shipped meta-schemas that never fetches anything."""
    from jsonschema_specifications import REGISTRY as SPECIFICATIONS
    from referencing import Registry

    return SPECIFICATIONS.combine(Registry(retrieve=_refuse))


def check_local_refs(schema: dict[str, Any], where: str) -> None:
    """``UserError`` naming ``where`` and the reference unless every ``$ref`` in ``schema`` resolves offline."""
    from referencing import Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = Resource.from_contents(schema, default_specification=DRAFT202012)  # its $schema picks the draft
    base = root.id() or ""
    registry = offline_registry().with_resource(base, root).crawl()  # sub-schemas with their own $id too
    pending = [(registry.resolver(base), root)]
    while pending:
        resolver, resource = pending.pop()
        contents = resource.contents
        refs = [(k, contents[k]) for k in REF_KEYWORDS if isinstance(contents, dict) and isinstance(contents.get(k), str)]
        for keyword, ref in refs:
            try:
                resolver.lookup(ref)
            except (Unresolvable, RemoteRefRefused):
                if ref.startswith("#"):
                    raise UserError(f"{where}: {keyword} {ref!r} points to nothing in the schema") from None
                raise UserError(f"{where}: remote {keyword} {ref!r} refused: only references inside the schema "
                                "(like '#/$defs/NAME') are allowed; nothing is fetched") from None  # fmt: skip
        pending.extend((resolver.in_subresource(sub), sub) for sub in resource.subresources())

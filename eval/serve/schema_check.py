"""Whether any finite JSON value satisfies a JSON Schema's ``$ref`` structure.

llguidance compiles a schema whose ``$ref`` s loop without end (``{"$ref": "#"}``, or a required
property that refers back to its own object) into a grammar no finite text completes: the decoder
then stops at once or half-way, and the client got a 200 with empty or broken "JSON". Such a
schema is refused with a 400 instead.

The check is the least fixpoint of "has a finite instance" over the schema's local ``$ref``
targets: a ``$ref`` counts only once its target is known to have one; a required property, the
first ``minItems`` items of an array, every ``allOf`` branch and at least one ``anyOf``/``oneOf``
branch must have one. Other keywords (patterns, bounds, enums) are llguidance's to judge; a
recursion through an optional property or an empty array is fine.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from parsetune.errors import UserError


def _resolve(root: Any, ref: str) -> tuple[bool, Any]:
    """``(found, node)`` for a local ``#/a/b`` pointer."""
    node = root
    pointer = unquote(ref[1:])
    if not pointer:
        return True, root
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _local_refs(schema: Any) -> set[str]:
    refs, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                refs.add(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return refs


def _types(node: dict) -> set[str] | None:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    return None  # any type


def _finite(node: Any, root: Any, known: set[str], depth: int = 0) -> bool:
    """Whether ``node`` has a finite instance, taking only the ``$ref`` s in ``known`` to have one."""
    if node is False:
        return False
    if not isinstance(node, dict) or depth > 200:
        return True
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in known and _resolve(root, ref)[0]:
        return False
    sub = lambda child: _finite(child, root, known, depth + 1)  # noqa: E731
    for key, need_all in (("allOf", True), ("anyOf", False), ("oneOf", False)):
        branches = node.get(key)
        if isinstance(branches, list) and branches:
            results = (sub(b) for b in branches)
            if not (all(results) if need_all else any(results)):
                return False
    types = _types(node)
    if types is not None and not types - {"object", "array"}:  # only containers: their members decide
        return ("object" in types and _object_finite(node, sub)) or ("array" in types and _array_finite(node, sub))
    return True


def _object_finite(node: dict, sub) -> bool:
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    required = node.get("required") if isinstance(node.get("required"), list) else []
    return all(sub(properties[name]) for name in required if isinstance(name, str) and name in properties)


def _array_finite(node: dict, sub) -> bool:
    least = node.get("minItems") if isinstance(node.get("minItems"), int) else 0
    prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
    if not all(sub(item) for item in prefix[:least]):
        return False
    return least <= len(prefix) or sub(node.get("items", True))


def check_finite_schema(schema: dict, where: str) -> None:
    """A UserError naming ``where`` when no finite JSON value can satisfy ``schema``'s ``$ref`` s."""
    refs = _local_refs(schema)
    known: set[str] = set()
    while True:  # one pass per newly proven target: at most len(refs) + 1
        proven = {ref for ref in refs - known if _finite(_resolve(schema, ref)[1], schema, known)}
        if not proven:
            break
        known |= proven
    if not _finite(schema, schema, known):
        loops = sorted(refs - known)
        raise UserError(f"{where}: no finite JSON value matches it: $ref {loops[0] if loops else '#'} refers back to itself without end")  # fmt: skip

"""JAX's persistent compilation cache for generation, so a second run does not compile again.

The cache lives in ``$PARSETUNE_COMPILATION_CACHE`` if set, else ``$XDG_CACHE_HOME/parsetune/xla``
(``~/.cache/parsetune/xla``); ``PARSETUNE_COMPILATION_CACHE=off`` disables it. Every compiled
program is kept, however quick its compilation (JAX's defaults skip programs that compile in
under a second, which on CPU is most decode steps of a small model). A cache directory that cannot
be created is skipped with a warning, never an error: it only costs time.
"""

from __future__ import annotations

import os
import sys


def compilation_cache_dir() -> str | None:
    configured = os.environ.get("PARSETUNE_COMPILATION_CACHE")
    if configured:
        return None if configured.lower() in ("off", "0", "none") else configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parsetune", "xla")


def enable_compilation_cache() -> str | None:
    """Point JAX at the cache directory (before the first compilation); returns it, or None."""
    import jax

    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        print(f"warning: no compilation cache ({path}: {err.strerror})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path

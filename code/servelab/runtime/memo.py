"""One measurement per test session: ``@experiment`` lets a test and a notebook share an expensive run.

A lesson's test and its notebook often call the same measurement (a benchmark sweep, a load test). Inside
one test session the second call should reuse the first one's result instead of measuring again::

    from servelab.runtime.memo import experiment

    @experiment
    def sweep(endpoint, concurrencies=(1, 4, 16)):
        ...                      # expensive; returns JSON/pickle-able data
        return rows

* Inside a test session the book's pytest plugin sets ``SERVELAB_MEMO_DIR`` to a scratch folder. The first
  call with given arguments computes and pickles its result there; a later call with the same arguments —
  in the test process or in a notebook kernel (a subprocess, which inherits the environment) — loads it.
  A file lock per key makes a concurrent second caller wait for the first instead of measuring twice.
* Outside a test session (``SERVELAB_MEMO_DIR`` unset) the decorator does nothing: a reader's call, or
  ``servelab run``, always measures.

The key is the function's module and qualified name plus ``repr`` of its arguments (with defaults applied),
so arguments need a stable ``repr``: numbers, strings, tuples, dataclasses such as ``VLLMEndpoint`` (whose
``process`` handle is left out: a test's endpoint and a kernel's endpoint to the same server match).
Arguments that only say *where* to run and not *what* to measure (an engine handle whose ``repr`` is an
object address) are left out of the key with ``@experiment(ignore=("llm",))``. An exception is not stored:
the next call runs again. A result that cannot be pickled is returned but not stored.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import inspect
import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

MEMO_ENV = "SERVELAB_MEMO_DIR"
EPHEMERAL_FIELDS = frozenset({"process"})  # dataclass fields that are handles, not part of *what* is measured
F = TypeVar("F", bound=Callable[..., Any])


def memo_dir() -> Path | None:
    value = os.environ.get(MEMO_ENV)
    return Path(value) if value else None


def experiment_key(func: Callable, args: tuple, kwargs: dict, ignore: Iterable[str] = ()) -> str:
    """``module.qualname(arg=repr, …)`` — the readable form of the key (hashed for the file name)."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        items = [(name, value) for name, value in bound.arguments.items() if name not in set(ignore)]
    except (TypeError, ValueError):  # no signature: fall back to the raw arguments
        items = [(str(i), value) for i, value in enumerate(args)] + sorted(kwargs.items())
    shown = ", ".join(f"{name}={stable_repr(value)}" for name, value in items)
    return f"{func.__module__}.{func.__qualname__}({shown})"


def stable_repr(value: Any) -> str:
    """``repr``, except that a dataclass leaves out its :data:`EPHEMERAL_FIELDS` (recursively).

    ``VLLMEndpoint``/``TritonEndpoint`` carry the ``process`` that started them in the test process, but
    not in a notebook kernel that found the same server through the environment: the key is *where* the
    server answers, not which process handle we hold.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.repr and f.name not in EPHEMERAL_FIELDS]
        inner = ", ".join(f"{f.name}={stable_repr(getattr(value, f.name))}" for f in fields)
        return f"{type(value).__qualname__}({inner})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(stable_repr(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _file_name(key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    head = re.sub(r"[^A-Za-z0-9_.]+", "_", key.split("(", 1)[0])[-80:]
    return f"{head}-{digest}"


def experiment(func: F | None = None, *, ignore: Iterable[str] = ()) -> F:
    """Decorate an expensive, deterministic-enough measurement so one test session runs it once."""
    ignored = tuple(ignore)

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            folder = memo_dir()
            if folder is None:
                return function(*args, **kwargs)
            key = experiment_key(function, args, kwargs, ignored)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{_file_name(key)}.pkl"
            with open(path.with_suffix(".lock"), "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits for the first one's result
                try:
                    if path.exists():
                        stored_key, result = pickle.loads(path.read_bytes())
                        if stored_key == key:
                            return result
                    result = function(*args, **kwargs)
                    try:
                        data = pickle.dumps((key, result))
                    except Exception:  # noqa: BLE001 — not picklable: measured, returned, not shared
                        return result
                    partial = path.with_suffix(f".tmp{os.getpid()}")
                    partial.write_bytes(data)
                    os.replace(partial, path)
                    return result
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

        wrapper.__wrapped_experiment__ = function  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate  # type: ignore[return-value]

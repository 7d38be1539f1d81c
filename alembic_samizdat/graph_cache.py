"""A graph built in an earlier process, reused when it provably is the graph this process would build.

A command line run or an Alembic autogenerate starts a new process, which renders every template and checks
every class again: at N = 1,000 that is a sixth of a no-op ``samizdat sync``. :func:`load` gives back the graph
an earlier process saved (:func:`save`) for the same classes, if and only if everything that building it reads
is the same, which is checked, not assumed:

* this library's code (the content of every one of its source files) and Python's version;
* every class in the set and everything it inherits, attribute by attribute: its name, module and qualified
  name, and every value in its own namespace and in those of its bases, compared by content (strings, numbers,
  and sets, tuples, lists and dicts of them; samizdat classes by their own such description).

Building a graph reads nothing else, as long as every method it calls is this library's own. So a class whose
namespace, or a base's, holds anything else — a method, property or descriptor written outside this library
(which may read a file, the environment or the clock), an object of another type — is not provable: such a set
of classes is never cached. That a module reads the environment at import time (``schema =
os.environ["APP_SCHEMA"]``) is fine: the values the classes end up with are what is compared.

Where: next to the bytecode of the first class's module (``importlib.util.cache_from_source``, so
``PYTHONPYCACHEPREFIX`` applies), one file per module, written only when Python writes bytecode
(not under ``PYTHONDONTWRITEBYTECODE`` or ``-B``). Whoever can write there can change that module's bytecode
anyway. The file is read with an unpickler that only builds this library's own types and plain containers.
Any problem reading or writing it means building the graph as if there were no cache.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import io
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Sequence
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

from .declared import Declared
from .model import Samizdat, SamizdatMeta
from .signature import definition_hash

_LIBRARY = Path(__file__).resolve().parent
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_SUFFIX = ".samizdat-graph"
_FORMAT = b"alembic-samizdat graph cache 1\n"
#: Namespace entries that building a graph never reads (documentation, annotations, CPython's bookkeeping).
_IGNORED = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__doc__",
        "__annotations__",
        "__annotate__",
        "__firstlineno__",
        "__static_attributes__",
    }
)
_PLAIN = (str, int, float, bool, bytes, type(None))


class _NotProvable(Exception):
    """Something building the graph might read is not a plain value: no caching."""


@lru_cache(maxsize=1)
def _library_stamp() -> bytes:
    """This library's code and the Python running it."""
    digest = hashlib.sha256(_FORMAT)
    digest.update(f"{sys.version}|{sys.implementation.cache_tag}|{sys.hexversion}".encode())
    for path in sorted(_LIBRARY.rglob("*")):
        if path.suffix in (".py", ".json") and path.is_file():
            digest.update(str(path.relative_to(_LIBRARY)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


@lru_cache(maxsize=1024)
def _in_library(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(_LIBRARY)


def _is_library_code(function: object) -> bool:
    filename = getattr(getattr(function, "__code__", None), "co_filename", None)
    return isinstance(filename, str) and _in_library(filename)


def _is_library_type(kind: type) -> bool:
    filename = getattr(sys.modules.get(kind.__module__), "__file__", None)
    return isinstance(filename, str) and _in_library(filename)


class _Describer:
    """Describes classes and values as text that is equal exactly when what building a graph reads is."""

    def __init__(self, classes: Sequence[type[Samizdat]]) -> None:
        self.index = {cls: i for i, cls in enumerate(classes)}
        self.done: dict[type, str] = {}
        self.busy: set[type] = set()

    def value(self, value: object) -> str:
        kind = type(value)
        if kind in _PLAIN:
            return f"{kind.__name__}:{value!r}"
        if kind is tuple or kind is list:
            return f"{kind.__name__}[{','.join(self.value(v) for v in value)}]"  # type: ignore[attr-defined]
        if kind is set or kind is frozenset:
            return f"{kind.__name__}{{{','.join(sorted(self.value(v) for v in value))}}}"  # type: ignore[attr-defined]
        if kind is dict:
            items = sorted(f"{self.value(k)}:{self.value(v)}" for k, v in value.items())  # type: ignore[attr-defined]
            return f"dict{{{','.join(items)}}}"
        if isinstance(value, type):
            return self.cls(value)
        if isinstance(value, enum.Enum) and _is_library_type(kind):
            return f"enum:{kind.__qualname__}.{value.name}"
        if isinstance(value, classmethod | staticmethod):
            return f"{kind.__name__}:{self.function(value.__func__)}"
        if isinstance(value, property):
            return f"property:{','.join(self.function(f) for f in (value.fget, value.fset, value.fdel) if f)}"
        if isinstance(value, types.FunctionType):
            return self.function(value)
        raise _NotProvable(f"{kind.__qualname__} value")

    def function(self, function: object) -> str:
        if not _is_library_code(function):
            raise _NotProvable("code written outside this library")
        return f"code:{getattr(function, '__qualname__', '?')}"

    def cls(self, cls: type) -> str:
        if cls in self.index:
            return f"class#{self.index[cls]}"
        return self.namespace(cls)

    def namespace(self, cls: type) -> str:
        """Everything of ``cls`` and its bases that building a graph may read."""
        if cls.__module__ == "builtins":
            return f"builtins.{cls.__qualname__}"  # immutable
        found = self.done.get(cls)
        if found is not None:
            return found
        if cls in self.busy:
            raise _NotProvable("a class refers to itself")
        meta = type(cls)
        if meta is not SamizdatMeta and meta is not type:
            raise _NotProvable("a metaclass of its own")
        self.busy.add(cls)
        try:
            parts = [f"{cls.__module__}.{cls.__qualname__}/{cls.__name__}"]
            parts += [self.cls(base) for base in cls.__bases__]
            for name, value in sorted(cls.__dict__.items()):
                if name not in _IGNORED:
                    parts.append(f"{name}={self.value(value)}")
        finally:
            self.busy.discard(cls)
        text = "(" + ";".join(parts) + ")"
        self.done[cls] = text
        return text


def _library_functions_untouched() -> bool:
    """Whether every function in this library's modules is still its own (none replaced at run time)."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "alembic_samizdat":
            continue
        for value in list(vars(module).values()):
            if isinstance(value, types.FunctionType) and not (
                _is_library_code(value) or _is_standard_library(value) or _is_dependency(value)
            ):
                return False
    return True


#: The packages this library imports functions from (besides Python's own).
_DEPENDENCIES = frozenset({"sqlalchemy", "alembic", "psycopg", "psycopg_binary", "pytest", "_pytest"})


def _is_dependency(function: types.FunctionType) -> bool:
    return str(getattr(function, "__module__", "")).split(".")[0] in _DEPENDENCIES


@lru_cache(maxsize=1024)
def _in_standard_library(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(_STDLIB)


def _is_standard_library(function: object) -> bool:
    """Python's own functions (``dataclasses.replace``, ``contextlib``'s wrappers of our generators…)."""
    filename = getattr(getattr(function, "__code__", None), "co_filename", None)
    return isinstance(filename, str) and _in_standard_library(filename)


def fingerprint(classes: Sequence[type[Samizdat]]) -> bytes | None:
    """What building the graph of ``classes`` reads, hashed; ``None`` when that cannot be known."""
    if not _library_functions_untouched():
        return None
    describer = _Describer(classes)
    digest = hashlib.sha256(_library_stamp())
    try:
        digest.update(describer.namespace(SamizdatMeta).encode() + b"\0")
        for cls in classes:
            digest.update(describer.namespace(cls).encode() + b"\0")
    except (_NotProvable, RecursionError):
        return None
    return digest.digest()


def _path(classes: Sequence[type[Samizdat]]) -> Path | None:
    module = sys.modules.get(classes[0].__module__) if classes else None
    source = getattr(module, "__file__", None)
    if not isinstance(source, str) or not source.endswith(".py"):
        return None
    try:
        bytecode = importlib.util.cache_from_source(source)
    except (NotImplementedError, ValueError):
        return None
    return Path(bytecode[: -len(".pyc")] + _SUFFIX)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, classes: Sequence[type[Samizdat]]) -> None:
        super().__init__(file, protocol=5)
        self.index = {cls: i for i, cls in enumerate(classes)}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, type):
            if obj in self.index:
                return self.index[obj]
            if issubclass(obj, Samizdat) and not _is_library_type(obj):
                raise _NotProvable("a class outside the set")
        return None


#: What the unpickler may build: this library's types and plain containers, nothing else.
_ALLOWED = {
    ("builtins", "frozenset"),
    ("builtins", "set"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("collections", "OrderedDict"),
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, classes: Sequence[type[Samizdat]]) -> None:
        super().__init__(file)
        self.classes = classes

    def persistent_load(self, pid: Any) -> Any:
        return self.classes[pid]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module.split(".")[0] == "alembic_samizdat" and "." not in name):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a graph")


def load(classes: Sequence[type[Samizdat]]) -> tuple[bytes | None, tuple[tuple[Declared, ...], Any] | None]:
    """``(fingerprint, (declarations, graph))`` (the graph a :class:`~alembic_samizdat.graph.Graph`) saved for ``classes`` by an earlier process, or ``(fingerprint,
    None)``; the fingerprint is ``None`` when ``classes`` cannot be cached at all."""
    if os.environ.get("SAMIZDAT_NO_GRAPH_CACHE"):
        return None, None
    stamp = fingerprint(classes)
    path = _path(classes)
    if stamp is None or path is None:
        return None, None
    try:
        data = path.read_bytes()
    except OSError:
        return stamp, None
    if not data.startswith(_FORMAT + stamp):
        return stamp, None
    try:
        declared, graph = _Unpickler(io.BytesIO(data[len(_FORMAT) + len(stamp) :]), classes).load()
    except Exception:
        return stamp, None
    if len(declared) != len(classes) or any(
        not isinstance(d, Declared) or d.source is not c for d, c in zip(declared, classes, strict=True)
    ):
        return stamp, None
    for item, cls in zip(declared, classes, strict=True):
        # The raw deps_on entries as this process iterates them (a set of classes iterates in an order of its
        # own in every process), exactly as declaring the class here would give them.
        object.__setattr__(item, "refs", tuple(cls.deps_on))
    return stamp, (declared, graph)


def save(classes: Sequence[type[Samizdat]], stamp: bytes, declared: tuple[Declared, ...], graph: object) -> None:
    """Keep the graph of ``classes`` for the next process (quietly nothing when it cannot be written)."""
    if sys.dont_write_bytecode:
        return
    path = _path(classes)
    if path is None:
        return
    for item in getattr(graph, "nodes", {}).values():
        definition_hash(item)  # kept on the declaration (see there): the next process need not hash again
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, classes).dump((declared, graph))
    except (_NotProvable, pickle.PicklingError, TypeError, AttributeError, RecursionError):
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(_FORMAT + stamp + buffer.getvalue())
        os.replace(temporary, path)
    except OSError:
        with suppress(OSError):
            temporary.unlink()

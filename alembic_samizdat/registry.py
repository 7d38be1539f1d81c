"""The registry: the set of samizdats one application declares, attached to its SQLAlchemy ``MetaData``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard, TypeVar

from .errors import DeclarationError, ModuleLoadError
from .identifiers import check_identifier
from .keys import Key
from .model import Samizdat, missing_template
from .sa_lazy import is_metadata

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from .graph import Graph

#: Where a registry is kept in ``MetaData.info``.
METADATA_KEY = "alembic_samizdat.registry"
DEFAULT_SCOPE = "default"

S = TypeVar("S", bound=type[Samizdat])


class SamizdatRegistry:
    """The samizdats of one application, and the scope their signatures carry.

    ``scope`` separates registries sharing a database: sync and nuke only ever touch objects signed with
    their own scope. Given ``metadata``, the registry attaches itself to it so that Alembic's env.py finds it
    through ``target_metadata``.

    A signature counts only on an object whose owner the running role has the privileges of (anyone can copy a
    signature onto an object of their own); ``trusted_owners`` names further roles whose objects count, e.g. the
    deployer's role for a read-only role that runs ``diff`` (docs/security.md).
    """

    def __init__(
        self, metadata: MetaData | None = None, *, scope: str = DEFAULT_SCOPE, trusted_owners: Iterable[str] = ()
    ) -> None:
        if not isinstance(scope, str) or not scope:
            raise DeclarationError(f"registry scope must be a non-empty string, not {scope!r}")
        self.scope = scope
        self.trusted_owners: frozenset[str] = frozenset(
            check_identifier(role, "trusted_owners role") for role in trusted_owners
        )
        self._classes: dict[type[Samizdat], None] = {}
        self.metadata = metadata
        if metadata is not None:
            metadata.info[METADATA_KEY] = self

    @classmethod
    def from_metadata(cls, metadata: MetaData) -> SamizdatRegistry | None:
        """The registry attached to ``metadata``, if any."""
        found = metadata.info.get(METADATA_KEY)
        return found if isinstance(found, SamizdatRegistry) else None

    def register(self, cls: S) -> S:
        """Register one samizdat class; returns it, so it works as a class decorator."""
        if not (isinstance(cls, type) and issubclass(cls, Samizdat)):
            raise DeclarationError(f"only samizdat classes can be registered, not {cls!r}")
        if cls.is_abstract():
            raise DeclarationError(
                f"{cls.label()} is abstract (__abstract__ = True); register the concrete classes derived from it"
            )
        if cls.sql_template is None:
            raise missing_template(cls)
        self._classes[cls] = None
        return cls

    def with_scope(self, scope: str) -> SamizdatRegistry:
        """This registry, or a copy of it signing with another ``scope`` (the MetaData is not re-attached)."""
        if scope == self.scope:
            return self
        copy = SamizdatRegistry(scope=scope, trusted_owners=self.trusted_owners)
        copy.metadata = self.metadata
        copy.register_all(*self)
        return copy

    def register_all(self, *classes: type[Samizdat]) -> None:
        """Register several classes."""
        for cls in classes:
            self.register(cls)

    def load(self, *modules: str) -> None:
        """Import modules (dotted paths or ``.py`` file paths) and register every concrete samizdat in them.

        Classes a module imports from elsewhere are registered too, and so is every class their ``deps_on``
        names (transitively), so dependencies come along.
        """
        found: list[type[Samizdat]] = []
        for spec in modules:
            module = _import(spec)
            found.extend(_samizdats_in(module))
        self.register_all(*with_dependencies(found))

    def __iter__(self) -> Iterator[type[Samizdat]]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, item: object) -> bool:
        return item in self._classes

    def lookup(self, name: str, schema: str | None = None) -> type[Samizdat]:
        """The registered class whose object is called ``name`` (optionally in ``schema``)."""
        check_identifier(name, "lookup name")
        found = [
            c
            for c in self._classes
            if c.object_name() == name and (schema is None or (not c.is_tenant() and c.schema_name() == schema))
        ]
        if len(found) != 1:
            what = "no" if not found else "several"
            raise KeyError(f"{what} registered samizdat named {name!r}" + (f" in schema {schema!r}" if schema else ""))
        return found[0]

    def by_key(self) -> dict[Key, type[Samizdat]]:
        """Registered classes by database identity."""
        return {cls.key(): cls for cls in self._classes if not cls.is_tenant()}

    def graph(self) -> Graph:
        """The checked dependency graph of the registered classes.

        Memoized (see :func:`~alembic_samizdat.graph.graph_of`): while the classes stay the same, every call
        after the first costs a check of the classes, not a new graph; registering a class, or changing one,
        builds it again. The graph does not depend on the scope, so copies made by :meth:`with_scope` share it.
        """
        from .graph import graph_of

        if not any(cls.is_tenant() for cls in self._classes):
            return graph_of(self._classes)
        from .tenants import check_shared, split_classes

        shared, _ = split_classes(self._classes)
        check_shared(shared)
        return graph_of(shared)

    def tenant_classes(self) -> list[type[Samizdat]]:
        """The registered classes declaring ``schema = TENANT`` (left out of :meth:`graph`)."""
        return [cls for cls in self._classes if cls.is_tenant()]

    def for_tenant(self, tenant: str) -> SamizdatRegistry:
        """The registry of one tenant schema: every TENANT class expanded into ``tenant``, signing with the
        tenant's scope (see :mod:`alembic_samizdat.tenants`). Its graph holds the tenant's objects only; the
        shared objects they read are the shared run's."""
        from .signature import tenant_scope
        from .tenants import check_shared, expand, split_classes

        shared, tenant_classes = split_classes(self._classes)
        check_shared(shared)
        copy = SamizdatRegistry(scope=tenant_scope(self.scope, tenant), trusted_owners=self.trusted_owners)
        copy.metadata = self.metadata
        copy.register_all(*(expand(cls, tenant) for cls in tenant_classes))
        return copy


def _is_declaration(value: object) -> TypeGuard[type[Samizdat]]:
    return isinstance(value, type) and issubclass(value, Samizdat) and not value.is_abstract()


def _samizdats_in(module: object) -> list[type[Samizdat]]:
    return [value for value in list(vars(module).values()) if _is_declaration(value)]


def with_dependencies(classes: Iterable[type[Samizdat]]) -> list[type[Samizdat]]:
    """``classes``, then every concrete samizdat class their ``deps_on`` (or a trigger's ``on_table``) names,
    transitively: DBSamizdat's loader adds this closure, so an entry module that imports only part of a package
    still brings every class those classes need. Malformed ``deps_on`` values are left for the declaration
    checks to report."""
    out: dict[type[Samizdat], None] = {}
    pending = list(classes)
    while pending:
        cls = pending.pop(0)
        if cls in out:
            continue
        out[cls] = None
        refs: list[object] = []
        deps = cls.deps_on
        if isinstance(deps, Iterable) and not isinstance(deps, str | bytes):
            refs.extend(deps)
        refs.append(getattr(cls, "on_table", None))
        pending.extend(ref for ref in refs if _is_declaration(ref) and ref not in out)
    return list(out)


_FILE_MODULES: dict[str, object] = {}


def _module_exists(name: str, path: str) -> bool:
    """Whether ``name`` is another module than the file at ``path`` (so using it would shadow that module)."""
    if name in sys.modules:
        return True
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return True
    return found is not None and found.origin != path


def _package_module(path: Path) -> str | None:
    """The dotted name of a file inside a package (a directory with ``__init__.py``), its top package's parent
    put on ``sys.path``: loaded so, the file's relative imports work, as with DBSamizdat's file paths."""
    if not path.stem.isidentifier() or not (path.parent / "__init__.py").is_file():
        return None
    parts = [path.stem]
    top = path.parent
    while (top / "__init__.py").is_file() and top.name.isidentifier():
        parts.insert(0, top.name)
        top = top.parent
    if str(top) not in sys.path:
        sys.path.insert(0, str(top))
    return ".".join(parts)


def _import(spec: str) -> object:
    """Import a dotted module path or a ``.py`` file path, turning every failure into one clear error."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise ModuleLoadError(f"cannot load {spec}: no such file")
            resolved = str(path.resolve())
            if resolved in _FILE_MODULES:
                return _FILE_MODULES[resolved]
            dotted = _package_module(path.resolve())
            if dotted is not None:
                return importlib.import_module(dotted)
            # Name the module after its file, so messages say "orders.Totals"; avoid shadowing another module.
            name = path.stem if path.stem.isidentifier() and not _module_exists(path.stem, resolved) else None
            name = name or f"samizdat_file_{len(_FILE_MODULES)}_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ModuleLoadError(f"cannot load {spec}: not a Python file")
            module = importlib.util.module_from_spec(loader_spec)
            # Files next to the loaded one may import each other, as they would when run as a script.
            parent = str(path.resolve().parent)
            if parent not in sys.path:
                sys.path.insert(0, parent)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except ImportError as exc:
                del sys.modules[name]
                if "no known parent package" not in str(exc) or not path.resolve().parent.name.isidentifier():
                    raise
                # DBSamizdat imports a file as a module of its directory (a namespace package), so such files may
                # use relative imports without an __init__.py: load it the same way.
                top = str(path.resolve().parent.parent)
                if top not in sys.path:
                    sys.path.insert(0, top)
                module = importlib.import_module(f"{path.resolve().parent.name}.{path.stem}")
            except BaseException:
                del sys.modules[name]
                raise
            _FILE_MODULES[resolved] = module
            return module
        if "" not in sys.path and os.getcwd() not in sys.path:
            # As DBSamizdat's loader: a dotted path is found from the current directory, as `python -m` would.
            sys.path.append(os.getcwd())
        return importlib.import_module(spec)
    except ModuleLoadError:
        raise
    except ModuleNotFoundError as exc:
        where = _failed_import_line(exc)
        if where is not None and not _names_spec(spec, exc.name):
            raise ModuleLoadError(
                f"cannot import {spec}: {where} imports {exc.name!r}, which Python cannot find here (install it "
                "in this environment, or fix that import)"
            ) from exc
        raise ModuleLoadError(
            f"cannot import {spec}: module {exc.name!r} not found (give a dotted module path importable from "
            "here, or a path to a .py file)"
        ) from exc
    except SyntaxError as exc:
        raise ModuleLoadError(
            f"cannot import {spec}: syntax error in {exc.filename} line {exc.lineno}: {exc.msg}"
        ) from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        where = _failed_import_line(exc) if isinstance(exc, ImportError) else None
        at = f"{where}: " if where else ""
        raise ModuleLoadError(
            f"cannot import {spec}: {at}{type(exc).__name__}: {first} (-v shows the traceback)"
        ) from exc


def _names_spec(spec: str, missing: str | None) -> bool:
    """Whether the missing module is the one asked for (or a package of its dotted path)."""
    if missing is None or spec.endswith(".py") or Path(spec).is_file():
        return False
    return spec == missing or spec.startswith(missing + ".")


def _failed_import_line(exc: BaseException) -> str | None:
    """``file line N`` of the user's import statement that failed: the innermost frame outside importlib."""
    found: str | None = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen") or filename == __file__ or Path(filename).parent.name == "importlib":
            continue
        found = f"{filename} line {lineno}"
    return found


def registry_from_modules(modules: list[str], *, scope: str | None = None) -> SamizdatRegistry:
    """The registry that ``modules`` define (a ``SamizdatRegistry`` or a ``MetaData`` holding one), filled with
    every concrete samizdat class they hold; a new registry when they define none.

    ``scope`` overrides the registry's scope.
    """
    found: list[SamizdatRegistry] = []
    classes: list[type[Samizdat]] = []
    for spec in modules:
        module = _import(spec)
        for value in list(vars(module).values()):
            if isinstance(value, SamizdatRegistry):
                candidate: SamizdatRegistry | None = value
            elif is_metadata(value):  # without importing SQLAlchemy when the modules did not
                candidate = SamizdatRegistry.from_metadata(value)
            else:
                candidate = None
                if _is_declaration(value):
                    classes.append(value)
            if candidate is not None and all(candidate is not f for f in found):
                found.append(candidate)
    if len(found) > 1:
        scopes = ", ".join(repr(r.scope) for r in found)
        raise DeclarationError(
            f"the modules define {len(found)} registries (scopes {scopes}); give the modules of one registry"
        )
    registry = found[0] if found else SamizdatRegistry(scope=scope or DEFAULT_SCOPE)
    if scope is not None:
        registry = registry.with_scope(scope)
    registry.register_all(*with_dependencies(classes))
    return registry

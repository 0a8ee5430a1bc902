"""One registry helper for every named thing users choose: backbones, heads, strategies, objectives, domain-adaptation
methods, selectors, scores, regularizers.

A :class:`Registry` maps names to constructors and the **capabilities** they declare (modality, family, whether a
method needs target labels, ...). Orchestrators read capabilities and never compare names::

    HEADS = Registry("head")

    @HEADS.register("logreg", needs_labels=True, description="multinomial logistic regression")
    class LogisticHead: ...

    HEADS.create("logreg", C=0.1)               # an instance; unknown names and parameters fail clearly
    HEADS.names(needs_labels=False)             # every head that trains without labels
    HEADS.get("logreg").caps["needs_labels"]    # a capability

Names ending in ``:`` are **families**: ``"timm:"`` resolves ``"timm:resnet18"`` with the argument ``"resnet18"``
passed first to the constructor.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import TransferkitError, UnknownNameError

__all__ = ["Registry", "Entry", "import_submodules"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered name.

    Attributes:
        name: the name (a family ends with ``:``).
        factory: the constructor (a class or a function).
        description: one line for listings.
        paper: the reference, for methods.
        caps: the declared capabilities.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    paper: str = ""
    caps: dict[str, Any] = field(default_factory=dict)

    @property
    def is_family(self) -> bool:
        """True for a prefix family such as ``timm:``."""
        return self.name.endswith(":")

    def cap(self, key: str, default: Any = None) -> Any:
        """A capability, or ``default`` when the entry does not declare it."""
        return self.caps.get(key, default)

    def __getattr__(self, key: str) -> Any:  # capabilities read as attributes: entry.modality
        caps = self.__dict__.get("caps") or {}
        if key in caps:
            return caps[key]
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name')!r} has no attribute or capability {key!r}")

    def installed(self) -> bool:
        """True when every Python module in the ``requires`` capability can be imported."""
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.caps.get("requires", ()))


class Registry(Generic[T]):
    """Named constructors with capabilities; see the module docstring.

    Args:
        kind: what the entries are, for messages (``"backbone"``, ``"domain-adaptation method"``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    # -- registration ----------------------------------------------------------------------------------
    def register(self, name: str | None = None, *, description: str = "", paper: str = "",
                 **caps: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register a class or function under ``name`` (default: its ``name`` attribute).

        ``description`` defaults to the first line of the docstring; ``paper`` to the object's ``paper`` attribute.
        """

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            self.add(name or getattr(obj, "name"), obj, description=description, paper=paper, **caps)
            return obj

        return deco

    def add(self, name: str, factory: Callable[..., T], *, description: str = "", paper: str = "",
            **caps: Any) -> Entry:
        """Register ``factory`` under ``name`` (the non-decorator form); a later entry replaces an earlier one."""
        if not isinstance(name, str) or not name:
            raise TransferkitError(f"a {self.kind} needs a non-empty name, got {name!r}")
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        entry = Entry(name, factory, description or (doc[0] if doc else ""), paper or getattr(factory, "paper", ""),
                      dict(caps))
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget an entry (for tests and interactive sessions that registered something temporary)."""
        self._entries.pop(name, None)

    # -- look-up ---------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(name)  # type: ignore[arg-type]
            return True
        except UnknownNameError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        """The entry for ``name`` and the argument after a family prefix (None for exact names).

        Raises:
            UnknownNameError: nothing of that name; the message suggests close names and lists the valid ones.
        """
        if isinstance(name, str) and name:
            e = self._entries.get(name)
            if e is not None and not e.is_family:
                return e, None
            if ":" in name:
                prefix, arg = name.split(":", 1)
                fam = self._entries.get(prefix + ":")
                if fam is not None:
                    if not arg:
                        raise UnknownNameError(f"{self.kind} {name!r} needs an argument after {prefix + ':'!r} "
                                               f"({fam.description})")
                    return fam, arg
        names = list(self._entries)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(n + ("<name>" if n.endswith(":") else "") for n in names)
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Valid: {shown}")

    def get(self, name: str) -> Entry:
        """The entry for ``name`` (families resolve by prefix)."""
        return self.resolve(name)[0]

    def create(self, name: str, **params: Any) -> T:
        """Build ``name`` with ``params``.

        Raises:
            UnknownNameError: unknown name.
            TransferkitError: a parameter the constructor does not take (the message lists those it takes).
        """
        entry, arg = self.resolve(name)
        accepted = _parameters(entry.factory)
        if accepted is not None:
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise TransferkitError(f"{self.kind} {name!r} takes no parameter {', '.join(unknown)}; it takes "
                                       f"{', '.join(accepted) if accepted else 'no parameters'}")
        return entry.factory(arg, **params) if arg is not None else entry.factory(**params)

    def entries(self, **caps: Any) -> list[Entry]:
        """Entries whose capabilities equal every given value, in registration order."""
        return [e for e in self._entries.values() if all(e.caps.get(k) == v for k, v in caps.items())]

    def names(self, **caps: Any) -> list[str]:
        """Names of :meth:`entries` with these capabilities."""
        return [e.name for e in self.entries(**caps)]

    def describe(self, **caps: Any) -> list[tuple[str, str]]:
        """``(name, description)`` of every matching entry."""
        return [(e.name, e.description) for e in self.entries(**caps)]


def _parameters(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword parameters a constructor accepts (None when it takes ``**kwargs`` or cannot be inspected)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    out = []
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not (i == 0 and p.name in ("self", "cls")):
            out.append(p.name)
    return out


def import_submodules(package: str, path: Any) -> None:
    """Import every module of a package (non-recursive, ``_``-prefixed ones too), so that whatever they register is
    present: a new backbone, head or domain-adaptation method is one new file, found without editing a list.

    Args:
        package: the package's ``__name__``.
        path: its ``__path__``.
    """
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        importlib.import_module(f"{package}.{info.name}")

"""One registry type for every name a user can type: methods, data sets, benches, bench kinds, scenarios and
toxicity scorers.

One policy everywhere: a name registered twice with something else is an error (a system must not silently
replace another's entry); an entry may be a `"module:attr"` string, imported on first use (registering costs
nothing at start-up); a lookup first discovers the systems (`plugins.discover`: the subpackages and the
`safebasin.plugins` entry points), so a new system needs no change here or in the CLI; and an unknown name is
one line with a did-you-mean.

A Registry is a read-only Mapping of name -> entry, so `name in REG`, `REG[name]` and `sorted(REG)` read as
they did when the registries were dicts.
"""

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def _load(ref: str):
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Mapping, Generic[T]):
    def __init__(self, what: str, hint: str = ""):
        """`what`: how the one-line errors name an entry ("method", "bench"); `hint`: what else is accepted."""
        self.what, self.hint = what, hint
        self._entries: dict[str, T | str] = {}  # resolved on first lookup
        self._registered: dict[str, T | str] = {}  # as registered: what a second registration is compared with
        self._lazy: set[str] = set()

    def register(self, name: str, entry: T, *, lazy: bool = False) -> T:
        """Add `name`. `lazy`: `entry` is a "module:attr" string, imported on first lookup. The same entry twice is
        a no-op (a module imported twice); another entry under a taken name raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name (got {name!r})")
        if lazy and (not isinstance(entry, str) or ":" not in entry):
            raise ValueError(f"{self.what} {name!r}: a lazy entry is a 'module:attr' string (got {entry!r})")
        if name in self._registered:
            if self._registered[name] is entry or self._registered[name] == entry:
                return entry
            raise ValueError(f"{self.what} {name!r} is registered twice ({_describe(self._registered[name])} and "
                             f"{_describe(entry)})")
        self._entries[name] = self._registered[name] = entry
        if lazy:
            self._lazy.add(name)
        return entry

    def lookup(self, name: str) -> T:
        """The entry, or one line naming the unknown name, its nearest known names and every known name."""
        if name not in self:
            raise self.unknown(name)
        return self[name]

    def unknown(self, name) -> UserError:
        """The one-line error for a name not registered (for callers that accept files too: `raise REG.unknown(x)`)."""
        known = sorted(self)
        near = difflib.get_close_matches(name, known, n=2, cutoff=0.6) if isinstance(name, str) else []
        guess = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
        return UserError(f"unknown {self.what} {name!r}{guess}: use one of {', '.join(known)}{self.hint}")

    def unregister(self, name: str) -> None:
        """Take a name back (a test's temporary entry, a plugin withdrawn); an unknown name is a no-op."""
        self._entries.pop(name, None)
        self._registered.pop(name, None)
        self._lazy.discard(name)

    def __getitem__(self, name: str) -> T:
        self._discover()
        entry = self._entries[name]  # KeyError, as a Mapping must; lookup() is the user-facing form
        if name in self._lazy:
            entry = _load(entry)
            self._entries[name] = entry
            self._lazy.discard(name)
        return entry

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    def __contains__(self, name) -> bool:
        self._discover()
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self)

    @staticmethod
    def _discover() -> None:
        from .plugins import discover

        discover()


def _describe(entry) -> str:
    if isinstance(entry, str):
        return entry
    return f"{getattr(entry, '__module__', type(entry).__module__)}.{getattr(entry, '__qualname__', type(entry).__name__)}"

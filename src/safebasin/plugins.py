"""Finding the systems: each subpackage of safebasin (`detox/`, `dialogue/`, `kg/`, ...) registers its
methods, data sets and benches when imported, and other packages can do the same through the
`safebasin.plugins` entry point group. Registries call `discover()` before a lookup, so a new
system needs no change in the loop, the data registry or the CLI."""

import importlib
import pkgutil

_done = False


def discover() -> None:
    global _done
    if _done:
        return
    _done = True
    import safebasin

    for info in pkgutil.iter_modules(safebasin.__path__):
        if info.ispkg:
            importlib.import_module(f"safebasin.{info.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="safebasin.plugins"):
        ep.load()

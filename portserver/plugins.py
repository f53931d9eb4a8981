"""
Discovery of L{IPortProtocol} providers in C{twisted/plugins/} drop-ins on C{sys.path}.

This is L{twisted.plugin.getPlugins}' own loop (L{getCache}, then load each cached plugin
that provides the interface), written out so that each provider's drop-in module is known:
two providers of one name are reported naming both drop-ins, and a drop-in that fails to
import is logged with its module name and traceback while every other one still loads.
"""

from __future__ import annotations

import traceback
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.plugin import getCache
from twisted.python.modules import getModule

from portserver.interfaces import IPortProtocol

log = Logger()


class DuplicateProtocolError(Exception):
    """
    Two drop-ins provide a protocol of the same name.
    """


@attrs.frozen
class DropinFailure:
    """
    A drop-in module that could not be imported (or whose provider could not be loaded).
    """

    module: str
    traceback: str

    def __str__(self) -> str:
        return f"protocol plugin drop-in {self.module} failed to import:\n{self.traceback}"


@attrs.frozen
class Discovery:
    """
    What discovery found: providers by name, where each came from, and failures.
    """

    providers: dict[str, Any]
    origins: dict[str, str]
    failures: tuple[DropinFailure, ...] = ()


def _package():
    import twisted.plugins

    return twisted.plugins


def _importFailure(moduleName: str) -> DropinFailure | None:
    """
    Import C{moduleName} again to learn why it failed (getCache keeps no reason).
    """
    try:
        getModule(moduleName).load()
    except Exception:
        return DropinFailure(moduleName, traceback.format_exc().rstrip())
    return None


def discover(package=None) -> Discovery:
    """
    Find every L{IPortProtocol} provider in C{package} (default: C{twisted.plugins}).

    @raise DuplicateProtocolError: when two distinct providers share a name.
    """
    package = _package() if package is None else package
    cache = getCache(package)
    failures: list[DropinFailure] = []
    providers: dict[str, Any] = {}
    origins: dict[str, str] = {}
    duplicates: list[str] = []

    for moduleName in sorted({m.name.split(".")[-1] for m in
                              getModule(package.__name__).iterModules()} - set(cache)):
        failure = _importFailure(f"{package.__name__}.{moduleName}")
        if failure is not None:
            failures.append(failure)

    for key in sorted(cache):
        dropin = cache[key]
        for plugin in dropin.plugins:
            if not any(i.isOrExtends(IPortProtocol) for i in plugin.provided):
                continue
            origin = f"{dropin.moduleName}.{plugin.name}"
            try:
                provider = plugin.load()
            except Exception:
                failures.append(DropinFailure(dropin.moduleName,
                                              traceback.format_exc().rstrip()))
                continue
            if not IPortProtocol.providedBy(provider):
                continue
            name = provider.name
            if name in providers:
                if providers[name] is not provider:
                    duplicates.append(
                        f"protocol {name!r} is provided twice: by {origins[name]} "
                        f"and by {origin}")
                continue
            providers[name] = provider
            origins[name] = origin

    for failure in failures:
        log.error("{dropin}", dropin=failure, module=failure.module)
    if duplicates:
        raise DuplicateProtocolError("; ".join(duplicates))
    return Discovery(providers, origins, tuple(failures))


def formatProtocols(discovery: Discovery) -> str:
    """
    The table C{--list-protocols} prints: name, well-known port, transports, description.
    """
    rows = [("NAME", "PORT", "TRANSPORTS", "DESCRIPTION")]
    for name in sorted(discovery.providers, key=lambda n: (discovery.providers[n].wellKnownPort, n)):
        p = discovery.providers[name]
        rows.append((name, str(p.wellKnownPort), ",".join(sorted(p.transports)), p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)

"""
Reloading: what applying a reloaded configuration to a running server matches and
changes. Listeners are matched by socket (L{socketKey}, L{matchListeners}); the outcome
is a L{ReloadReport}, or a L{ReloadError} when nothing was changed. Applying it is
L{portserver.server.PortServer.reload}; re-reading the config is L{portserver.reload}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from portserver.plan import Listener


class ReloadError(Exception):
    """
    A reloaded configuration could not be applied; nothing was changed. C{errors} says
    why, one message each.
    """

    def __init__(self, errors):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


@attrs.frozen
class ReloadReport:
    """
    What applying a reloaded configuration changed.

    @ivar added: the listeners that started listening; C{removed}: those that stopped
        (their connections drain); C{changed}: those that kept their socket and serve
        new connections with new settings; C{unchanged}: how many kept everything.
    @ivar denied: live connections closed because the new access rules deny their peer.
    @ivar warnings: settings that only a restart applies, and listeners that could not
        be bound once the ones they replace had closed.
    """

    generation: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0
    denied: int = 0
    warnings: tuple[str, ...] = ()

    def asDict(self) -> dict:
        return {"generation": self.generation, "added": list(self.added),
                "removed": list(self.removed), "changed": list(self.changed),
                "unchanged": self.unchanged, "denied": self.denied,
                "warnings": list(self.warnings)}

    def describe(self) -> str:
        parts = [f"{len(self.added)} listener(s) added", f"{len(self.removed)} removed",
                 f"{len(self.changed)} changed", f"{self.unchanged} unchanged"]
        if self.denied:
            parts.append(f"{self.denied} connection(s) closed by the new access rules")
        return ", ".join(parts)


def socketKey(listener: Listener) -> tuple:
    """
    What a reload matches listeners by: the socket (transport, interface, port), so a
    listener whose address is unchanged keeps its socket, whatever else changed. A
    listener on port 0 ("any free port") is matched by service too, and keeps the port
    it was given.
    """
    if listener.port == 0:
        return (listener.transport, listener.interface, 0, listener.service)
    return (listener.transport, listener.interface, listener.port)


def matchListeners(children, listeners) -> tuple[list, list, list]:
    """
    Match the running C{children} (listener services, each with a C{listener}) with a
    reloaded plan's C{listeners}, by L{socketKey}.

    @return: C{(kept, added, removed)}: C{kept} pairs each child whose socket is still
        in the plan with the listener it is to serve (in plan order), C{added} lists
        the listeners no child serves, C{removed} the children no listener matches.
    """
    current = {socketKey(child.listener): child for child in children}
    kept, added = [], []
    for listener in listeners:
        child = current.pop(socketKey(listener), None)
        if child is None:
            added.append(listener)
        else:
            kept.append((child, listener))
    return kept, added, list(current.values())


def restartOnly(old, new) -> list[str]:
    """
    Warnings for the settings of C{new} (a L{ServerConfig}) that differ from C{old} and
    take effect only at a restart.
    """
    warnings = []
    if old.status.listen != new.status.listen:
        warnings.append(f"status.listen changed to {new.status.listen!r}: the status "
                        f"service stays on {old.status.listen!r} until a restart")
    elif old.status != new.status:
        warnings.append("status settings (tokens) changed: they apply at the next restart")
    if old.registry != new.registry:
        warnings.append("registry settings changed: they apply at the next restart")
    if old.workers != new.workers:
        warnings.append(f"workers changed to {new.workers}: {old.workers} worker "
                        "process(es) serve until a restart")
    return warnings

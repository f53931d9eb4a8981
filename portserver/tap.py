"""
C{twistd portserver}: the command-line options and the service they make.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

from twisted.python import usage

from portserver.config import ConfigError
from portserver.plan import formatPlan, loadPlan
from portserver.plugins import DuplicateProtocolError, discover, formatProtocols


def bundledConfigPath() -> str:
    """
    The config shipped with portserver: the copy installed in the package, or, when run
    from a source checkout (or an editable install), the checkout's C{etc/portserver.yaml}.
    """
    installed = resources.files("portserver").joinpath("etc", "portserver.yaml")
    if installed.is_file():
        return str(installed)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "etc", "portserver.yaml")


class Options(usage.Options):
    """
    Options of C{twistd portserver}. Checking happens here, in L{postOptions}, so a bad
    config stops C{twistd} with a clear report before anything is bound.
    """

    synopsis = "[--config PATH] [--port-offset N] [--check | --list-protocols]"
    longdesc = ("Serve many well-known ports, each through a protocol plugin, as the YAML "
                "config says. Without --config, the bundled etc/portserver.yaml is used.")

    optParameters = [
        ["config", "c", None, "The YAML config file [default: the bundled one]."],
        ["port-offset", None, 0,
         "Add N to every port below 1024 (run unprivileged during development).", int],
    ]
    optFlags = [
        ["check", None, "Check the config, print the port plan, and exit 0 (valid) or 1."],
        ["list-protocols", None, "List the protocol plugins found, and exit."],
    ]

    def __init__(self, stdout=None, stderr=None, discover=discover, loadPlan=loadPlan):
        super().__init__()
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._discover = discover
        self._loadPlan = loadPlan

    def fail(self, message: str):
        """
        Print C{message} to stderr and exit 1 (no traceback, no usage text).
        """
        print(message, file=self.stderr)
        raise SystemExit(1)

    def postOptions(self):
        offset = self["port-offset"]
        if not 0 <= offset <= 64511:
            raise usage.UsageError("--port-offset must be between 0 and 64511")
        try:
            discovery = self._discover()
        except DuplicateProtocolError as e:
            self.fail(f"portserver: {e}")
        if self["list-protocols"]:
            print(formatProtocols(discovery), file=self.stdout)
            raise SystemExit(0)
        path = self["config"] or bundledConfigPath()
        self["config"] = path
        try:
            plan = self._loadPlan(path, discovery.providers, portOffset=offset)
        except ConfigError as e:
            self.fail(f"portserver: {path}: {e.report()}")
        if self["check"]:
            print(formatPlan(plan), file=self.stdout)
            print(f"portserver: {path}: configuration is valid", file=self.stdout)
            raise SystemExit(0)
        self["plan"] = plan


def _startupExceptHook(previous):
    """
    An C{excepthook} that prints a L{StartupError} as its message alone: twistd lets an
    exception from C{privilegedStartService} reach the top, and a traceback is not a
    message for an operator. Anything else goes to the previous hook.
    """
    from portserver.service import StartupError

    def hook(kind, value, tb):
        if issubclass(kind, StartupError):
            print(f"portserver: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    return hook


def makeService(options, reactor=None):
    """
    The service tree for C{options} (parsed L{Options}): a L{MultiService} holding the
    L{PortServer} (named C{"portserver"}) and, unless the config turns them off, the
    connection log (C{"connection-log"}) and the status web service (named C{"status"}).
    """
    from portserver.connlog import ConnectionLog
    from portserver.service import PortServer, ServerTree
    from portserver.status.web import StatusService

    if reactor is None:
        from twisted.internet import reactor
    sys.excepthook = _startupExceptHook(sys.excepthook)
    plan = options["plan"]
    tree = ServerTree()
    server = PortServer(plan, reactor)
    server.setName("portserver")
    if plan.config.registry.connectionLog is not None:
        # First in, last out: it still logs the connections closed at shutdown.
        ConnectionLog(server.registry, plan.config.registry.connectionLog,
                      reactor).setServiceParent(tree)
    server.setServiceParent(tree)
    if plan.config.status.listen is not None:
        StatusService(server, plan.config.status.listen, reactor).setServiceParent(tree)
    return tree

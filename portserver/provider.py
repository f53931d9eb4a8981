"""
L{PortProtocol}: the ready-made L{IPortProtocol} provider, for the built-ins and for plugin
authors who would rather declare a protocol than implement the interface by hand.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from portserver.interfaces import IPortProtocol
from portserver.options import Option, OptionProblem, OptionsError, checkOptions


@implementer(IPlugin, IPortProtocol)
@attrs.frozen
class PortProtocol:
    """
    An L{IPortProtocol} made of a name, a port, an options schema and builder callables.

    @ivar factory: C{factory(service, reactor)} returns the TCP protocol factory, or
        L{None} when the protocol has no TCP side.
    @ivar datagram: C{datagram(service, reactor)} returns the UDP datagram protocol, or
        L{None} when the protocol has no UDP side.
    @ivar options: the schema of the C{options:} mapping, checked by
        L{portserver.options.checkOptions}: each option's type, C{check}, C{required}
        and C{convert}.
    @ivar validate: C{validate(options)}, for what one option cannot say alone: rules
        between options ("either C{target}, or C{host} and C{port}") and values derived
        from several (a program looked up on the C{PATH} another option gives). It is
        called only when every option has passed its own check, with the checked dict
        (defaults filled in, values converted), which it may complete or normalise in
        place; that dict is what L{validateOptions} returns. It returns a list of
        L{portserver.options.OptionProblem}, empty when all is well. Whatever it fills
        in should pass the schema again: validated options must validate again
        unchanged.
    @ivar defaultLimits: the protocol's own defaults for the keys of a service's
        C{limits:} (e.g. C{{"idle_timeout": 300}}), under the config's global and
        per-service C{limits:}.
    """

    name: str
    description: str
    wellKnownPort: int
    factory: Callable[[Any, Any], Any] | None = None
    datagram: Callable[[Any, Any], Any] | None = None
    options: Mapping[str, Option] = attrs.field(factory=dict)
    validate: Callable[[dict], list[OptionProblem]] | None = None
    defaultLimits: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def transports(self) -> frozenset[str]:
        """
        The transports this protocol has a builder for.
        """
        return frozenset(
            name for name, builder in (("tcp", self.factory), ("udp", self.datagram))
            if builder is not None
        )

    def validateOptions(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """
        Check C{options} against the declared schema, then with C{validate} (only if
        every option passed).

        @return: the checked options, completed by C{validate}.
        @raise OptionsError: listing the problems of the first stage that found any.
        """
        result = checkOptions(options, self.options)
        if self.validate is not None:
            problems = self.validate(result)
            if problems:
                raise OptionsError(problems)
        return result

    def buildFactory(self, service, reactor):
        """
        Build the TCP factory for C{service}.
        """
        if self.factory is None:
            raise ValueError(f"protocol {self.name!r} has no tcp transport")
        return self.factory(service, reactor)

    def buildDatagramProtocol(self, service, reactor):
        """
        Build the UDP protocol for C{service}.
        """
        if self.datagram is None:
            raise ValueError(f"protocol {self.name!r} has no udp transport")
        return self.datagram(service, reactor)

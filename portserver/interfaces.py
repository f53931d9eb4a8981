"""
The interfaces portserver and its plugins meet at.
"""

from zope.interface import Attribute, Interface


class IPortProtocol(Interface):
    """
    A protocol provider: one kind of service portserver can run on a port.

    Providers are found with L{twisted.plugin.getPlugins} in any C{twisted/plugins/}
    drop-in on C{sys.path}; a provider there must also provide L{twisted.plugin.IPlugin}.
    """

    name = Attribute("The name a service's C{protocol:} key uses, e.g. C{'echo'}. Unique.")
    description = Attribute("A one-line human description.")
    wellKnownPort = Attribute("The port (1-65535) a service uses when its config names none.")
    transports = Attribute("A frozenset of the transports supported: C{'tcp'}, C{'udp'}.")

    def validateOptions(options):
        """
        Check the C{options:} mapping of one configured service.

        @param options: a mapping from option names (L{str}) to values loaded from YAML.
        @return: the options to build with (defaults filled in, values normalised).
        @raise portserver.options.OptionsError: listing every problem found, each naming
            the option at fault when there is one.
        """

    def buildFactory(service, reactor):
        """
        Build the stream protocol factory for one service (called for C{tcp}).

        @param service: the L{portserver.config.ServiceSpec}; its C{options} were
            returned by L{validateOptions}.
        @param reactor: the reactor the service runs on (a clock among other things).
        @return: an L{twisted.internet.interfaces.IProtocolFactory} provider.
        """

    def buildDatagramProtocol(service, reactor):
        """
        Build the datagram protocol for one service (called for C{udp}).

        @param service: as for L{buildFactory}.
        @param reactor: as for L{buildFactory}.
        @return: a L{twisted.internet.protocol.DatagramProtocol}.
        """


class ITrackedTransport(Interface):
    """
    What the tracking layer adds to the transport a plugin's TCP protocol is given: the
    connection's registry record, and a way to show a connection the plugin opens on its
    behalf (as C{forward} does) linked to it.

    A plugin should test C{ITrackedTransport.providedBy(self.transport)}: under a bare
    transport (a plugin's own unit tests) there is nothing to record into.
    """

    record = Attribute("The L{portserver.registry.ConnectionRecord} of this connection.")

    def openOutbound(local, remote):
        """
        Record that the plugin opened a connection from C{local} to C{remote} (each an
        C{(ip, port)} pair) for this connection.

        @return: the L{portserver.registry.OutboundRecord}; count its traffic into its
            C{bytesIn} and C{bytesOut} and end it with L{closeOutbound}.
        """

    def closeOutbound(record, reason):
        """
        Record that the outbound connection C{record} ended, for C{reason} (one of the
        close reasons of L{portserver.registry}, e.g. C{"server-closed"}).
        """

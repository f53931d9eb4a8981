"""
Bare Twisted: the same echo and discard protocols portserver serves (from
C{twisted.protocols.wire}), on the same reactor, with no portserver layer.

    python bench/servers/twisted_echo.py --echo PORT --discard PORT [--reuseport]

With C{--reuseport}, the TCP echo listens on a socket of its own with SO_REUSEPORT, so
that several such processes share the port (the kernel spreads connections over them):
bare Twisted on every core, for the C{workers} scenario.

Echo over TCP and UDP on C{--echo}, discard over TCP on C{--discard}, all on 127.0.0.1.
Prints C{ready} once listening; stops on SIGTERM.
"""

import argparse
import socket

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import DatagramProtocol, ServerFactory  # noqa: E402
from twisted.protocols.wire import Discard, Echo  # noqa: E402


class EchoDatagram(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--echo", type=int, required=True)
    parser.add_argument("--discard", type=int, required=True)
    parser.add_argument("--reuseport", action="store_true")
    args = parser.parse_args()
    if args.reuseport:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind(("127.0.0.1", args.echo))
        listening.listen(4096)
        listening.setblocking(False)
        reactor.adoptStreamPort(listening.fileno(), socket.AF_INET,
                                ServerFactory.forProtocol(Echo))
        listening.close()
        print("ready", flush=True)
        reactor.run()
        return
    reactor.listenTCP(args.echo, ServerFactory.forProtocol(Echo), backlog=4096,
                      interface="127.0.0.1")
    reactor.listenUDP(args.echo, EchoDatagram(), interface="127.0.0.1")
    reactor.listenTCP(args.discard, ServerFactory.forProtocol(Discard), backlog=4096,
                      interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()

"""
What a user might write instead: an echo and discard server on stdlib asyncio, or on uvloop
with C{--uvloop}.

    python bench/servers/asyncio_echo.py --echo PORT --discard PORT [--uvloop]

Echo over TCP and UDP on C{--echo}, discard over TCP on C{--discard}, all on 127.0.0.1.
Prints C{ready} once listening; stops on SIGTERM.
"""

import argparse
import asyncio
import signal


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Discard(asyncio.Protocol):
    def data_received(self, data):
        pass


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve(echo, discard):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    servers = [
        await loop.create_server(Echo, "127.0.0.1", echo, backlog=4096),
        await loop.create_server(Discard, "127.0.0.1", discard, backlog=4096),
    ]
    udp, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=("127.0.0.1", echo))
    print("ready", flush=True)
    await stop
    udp.close()
    for server in servers:
        server.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--echo", type=int, required=True)
    parser.add_argument("--discard", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.run(serve(args.echo, args.discard))
    else:
        asyncio.run(serve(args.echo, args.discard))


if __name__ == "__main__":
    main()

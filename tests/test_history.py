"""
Tests for L{portserver.status.history}: the once-a-second samples of each service's live
connections and accepts, their bounded window, and C{GET /api/history}.

Everything runs on a L{task.Clock} (or a L{PortReactor}): time moves only when a test
advances it.
"""

from __future__ import annotations

import json

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from portserver.registry import CLIENT_CLOSED, Endpoint, Registry
from portserver.server import PortServer
from portserver.status.history import History
from portserver.status.web import StatusService
from tests.support import RULE, PortReactor, makePlan, spec
from tests.test_status_web import fetch

LOCAL = Endpoint("127.0.0.1", 7)


def peer(port: int) -> Endpoint:
    return Endpoint("127.0.0.2", port)


class HistoryTests(SynchronousTestCase):
    """
    L{History} on a registry filled by hand, sampling on a L{task.Clock}.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.registry = Registry(self.clock, RULE)
        self.listening = ["echo", "daytime"]
        self.history = History(self.registry, self.clock, services=lambda: self.listening)

    def open(self, service: str = "echo", port: int = 40000):
        return self.registry.open(service, service, "tcp", LOCAL, peer(port))

    def start(self):
        self.history.startService()
        self.addCleanup(self.history.stopService)

    def test_emptyUntilFirstSample(self):
        """
        Started, the history has no sample until one C{interval} has passed; it still
        names the listening services, with empty lists.
        """
        self.start()
        self.clock.advance(0.999)
        self.assertEqual(self.history.asDict(), {
            "interval": 1.0, "window": 600, "now": 1000.999, "t": [],
            "services": {"daytime": {"live": [], "accepts": []},
                         "echo": {"live": [], "accepts": []}},
            "total": {"live": [], "accepts": []}})

    def test_onePerInterval(self):
        """
        One sample per second of the injected clock, each stamped with the clock's time.
        """
        self.start()
        self.clock.advance(1)
        self.assertEqual(self.history.asDict()["t"], [1001.0])
        for _ in range(3):
            self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(history["t"], [1001.0, 1002.0, 1003.0, 1004.0])
        self.assertEqual(history["now"], 1004.0)
        self.assertEqual(history["services"]["echo"], {"live": [0, 0, 0, 0],
                                                       "accepts": [0, 0, 0, 0]})

    def test_liveCountsTCPAndUDP(self):
        """
        C{live} counts each service's live TCP connections and UDP flows at the sample;
        C{total} sums the services.
        """
        self.start()
        self.open("echo", 40000)
        self.open("echo", 40001)
        self.registry.flow("echo", "echo", LOCAL, peer(40002))
        self.open("daytime", 40003)
        self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(history["services"]["echo"]["live"], [3])
        self.assertEqual(history["services"]["daytime"]["live"], [1])
        self.assertEqual(history["total"]["live"], [4])

    def test_acceptsPerInterval(self):
        """
        C{accepts} counts the connections and new UDP flows accepted since the previous
        sample (not before the history started); closing one takes nothing off, and a
        datagram of a live flow is not a new accept.
        """
        self.open("echo", 39999)  # before the start: not counted
        self.start()
        first = [self.open("echo", 40000 + i) for i in range(3)]
        self.registry.flow("echo", "echo", LOCAL, peer(41000))
        self.clock.advance(1)
        self.registry.close(first[0], CLIENT_CLOSED)
        self.registry.flow("echo", "echo", LOCAL, peer(41000))  # the same flow
        self.open("daytime", 40010)
        self.clock.advance(1)
        self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(history["services"]["echo"], {"live": [5, 4, 4],
                                                       "accepts": [4, 0, 0]})
        self.assertEqual(history["services"]["daytime"], {"live": [0, 1, 1],
                                                          "accepts": [0, 1, 0]})
        self.assertEqual(history["total"], {"live": [5, 5, 5], "accepts": [4, 1, 0]})

    def test_windowIsBounded(self):
        """
        Only the last C{window} samples are kept: after 700 seconds, the 600 newest.
        """
        self.start()
        for _ in range(700):
            self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(len(self.history.samples), 600)
        self.assertEqual(len(history["t"]), 600)
        self.assertEqual((history["t"][0], history["t"][-1]), (1101.0, 1700.0))
        self.assertEqual(len(history["services"]["echo"]["live"]), 600)

    def test_smallerWindowAndInterval(self):
        """
        C{window} and C{interval} are parameters: with 3 samples of 0.5 s, a sample every
        half second and the last 3 kept.
        """
        history = History(self.registry, self.clock, interval=0.5, window=3)
        history.startService()
        self.addCleanup(history.stopService)
        for _ in range(5):
            self.clock.advance(0.5)
        shown = history.asDict()
        self.assertEqual((shown["interval"], shown["window"], shown["t"]),
                         (0.5, 3, [1001.5, 1002.0, 1002.5]))

    def test_gapsShowInTimes(self):
        """
        When the clock jumps (a reactor busy for 5 seconds), one sample is taken, stamped
        with the real time and holding every accept of the gap: a rate is
        C{accepts / (t[i] - t[i-1])}.
        """
        self.start()
        self.clock.advance(1)
        self.open("echo", 40000)
        self.open("echo", 40001)
        self.clock.advance(5)
        history = self.history.asDict()
        self.assertEqual(history["t"], [1001.0, 1006.0])
        self.assertEqual(history["services"]["echo"]["accepts"], [0, 2])

    def test_servicesShown(self):
        """
        A service is shown while it listens or while a sample in the window has it: one
        that stopped listening stays (with its old counts) until its samples are gone;
        services seen only in the registry are shown too; names are sorted.
        """
        self.start()
        self.open("zebra", 40000)
        self.clock.advance(1)
        self.listening = ["echo"]  # a reload removed daytime
        self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(list(history["services"]), ["daytime", "echo", "zebra"])
        self.assertEqual(history["services"]["daytime"], {"live": [0, 0],
                                                          "accepts": [0, 0]})
        self.assertEqual(history["services"]["zebra"], {"live": [1, 1],
                                                        "accepts": [1, 0]})
        for _ in range(600):
            self.clock.advance(1)
        self.assertEqual(list(self.history.asDict()["services"]), ["echo", "zebra"])

    def test_withoutServices(self):
        """
        Without C{services}, only the services in the samples are shown.
        """
        history = History(self.registry, self.clock)
        history.startService()
        self.addCleanup(history.stopService)
        self.clock.advance(1)
        self.assertEqual(history.asDict()["services"], {})
        self.open("echo")
        self.clock.advance(1)
        self.assertEqual(history.asDict()["services"], {"echo": {"live": [0, 1],
                                                                 "accepts": [0, 1]}})

    def test_stopAndRestart(self):
        """
        Stopped, the history takes no sample and leaves no call on the clock; it keeps
        its samples. Started again, it counts accepts from then on.
        """
        self.history.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.history.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.open("echo", 40000)
        self.clock.advance(10)
        self.assertEqual(self.history.asDict()["t"], [1001.0])
        self.start()
        self.open("echo", 40001)
        self.clock.advance(1)
        history = self.history.asDict()
        self.assertEqual(history["t"], [1001.0, 1012.0])
        self.assertEqual(history["services"]["echo"], {"live": [0, 2], "accepts": [0, 1]})

    def test_invalidParameters(self):
        """
        A non-positive interval or a window under 1 is refused.
        """
        self.assertRaises(ValueError, History, self.registry, self.clock, interval=0)
        self.assertRaises(ValueError, History, self.registry, self.clock, window=0)

    def test_jsonReady(self):
        """
        L{History.asDict} is plain JSON values.
        """
        self.start()
        self.open()
        self.clock.advance(1)
        self.assertEqual(json.loads(json.dumps(self.history.asDict())),
                         self.history.asDict())


class ServerHistoryTests(SynchronousTestCase):
    """
    The history of a L{PortServer}, and C{/api/history} of its L{StatusService}.
    """

    def setUp(self):
        self.reactor = PortReactor()
        self.reactor.advance(500)
        self.server = PortServer(makePlan(spec("echo", port=7, transports=("tcp", "udp")),
                                          spec("daytime", port=8013)), self.reactor)

    def test_forServer(self):
        """
        L{History.forServer} samples the server's registry on the server's reactor and
        shows every service with a listener.
        """
        history = History.forServer(self.server)
        history.startService()
        self.addCleanup(history.stopService)
        self.server.registry.open("echo", "echo", "tcp", LOCAL, peer(40000))
        self.reactor.advance(1)
        self.assertEqual(history.asDict()["services"], {
            "daytime": {"live": [0], "accepts": [0]},
            "echo": {"live": [1], "accepts": [1]}})

    def test_statusServiceSamples(self):
        """
        The L{StatusService} starts its history with itself, on its injected reactor
        (not the global one), and stops it when it stops.
        """
        status = StatusService(self.server, "tcp:8790:interface=127.0.0.1", self.reactor)
        self.assertIs(status.history.clock, self.reactor)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        status.startService()
        self.reactor.advance(1)
        self.reactor.advance(1)
        self.assertEqual(len(status.history.samples), 2)
        self.successResultOf(status.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_api(self):
        """
        C{GET /api/history} answers L{History.asDict} as JSON, with the API's headers.
        """
        status = StatusService(self.server, "tcp:8790:interface=127.0.0.1", self.reactor)
        status.startService()
        self.addCleanup(status.stopService)
        self.server.registry.open("echo", "echo", "tcp", LOCAL, peer(40000))
        self.reactor.advance(1)
        self.server.registry.flow("echo", "echo", LOCAL, peer(40001))
        self.reactor.advance(1)
        response = fetch(status.site, b"/api/history")
        self.assertEqual((response.code, response.header("content-type"),
                          response.header("cache-control")),
                         (200, "application/json; charset=utf-8", "no-store"))
        self.assertEqual(response.json(), {
            "interval": 1.0, "window": 600, "now": 502.0, "t": [501.0, 502.0],
            "services": {"daytime": {"live": [0, 0], "accepts": [0, 0]},
                         "echo": {"live": [1, 2], "accepts": [1, 1]}},
            "total": {"live": [1, 2], "accepts": [1, 1]}})

"""
Tests for L{portserver.workerview}: a worker's L{RegistryFeed} batching its registry's
events, the L{BigBytes} AMP argument, and the main process's L{WorkerView} applying them
to a L{MirrorRegistry}; the two sides talk AMP over L{twisted.test.iosim}, in one
process, on a L{task.Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase

from portserver.connlog import formatLine
from portserver.registry import (
    CLIENT_CLOSED,
    CLOSED,
    EVICTED,
    OPEN,
    SHUTDOWN,
    WORKER_LOST,
    Endpoint,
    Registry,
)
from portserver.workerproto import Channel
from portserver.workerview import (
    BATCH_INTERVAL,
    BATCH_SIZE,
    FLUSH_TIMEOUT,
    BigBytes,
    Events,
    MirrorRegistry,
    RegistryFeed,
    WorkerView,
    decodeEntries,
    feedPart,
    mirrorPart,
    workerRows,
)
from tests.support import PortReactor, makePlan, spec

LOCAL = Endpoint("127.0.0.1", 7)


def peer(port: int, host: str = "127.0.0.2") -> Endpoint:
    return Endpoint(host, port)


class RecordingChannel:
    """
    Stands in for a connected channel: keeps every C{callRemote} (command, arguments)
    and answers each with the next of C{answers} (default: at once, C{{}}).
    """

    def __init__(self):
        self.connected = True
        self.calls: list[tuple] = []
        self.answers: list[Deferred] = []

    def callRemote(self, command, **arguments):
        self.calls.append((command, arguments))
        return self.answers.pop(0) if self.answers else succeed({})

    def batches(self) -> list[list]:
        """
        The entries of every L{Events} sent, batch by batch.
        """
        return [decodeEntries(arguments["events"]) for command, arguments in self.calls
                if command is Events]


class FeedTests(SynchronousTestCase):
    """
    L{RegistryFeed}: one list append per event; a batch every L{BATCH_INTERVAL} seconds
    or at L{BATCH_SIZE} events; records and counters as plain values.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = Registry(self.clock)
        self.channel = RecordingChannel()
        self.feed = RegistryFeed(self.registry, self.channel, self.clock)
        self.feed.start()

    def test_defaults(self):
        """
        Batches go every 0.2 seconds, or at 512 events.
        """
        self.assertEqual((BATCH_INTERVAL, BATCH_SIZE), (0.2, 512))

    def test_eventIsKeptNotSent(self):
        """
        An event is appended to C{events} as C{(event, record)}, and nothing is sent
        or turned into values then.
        """
        record = self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        self.assertEqual(self.feed.events, [(OPEN, record)])
        self.assertEqual(self.channel.calls, [])

    def test_timeTrigger(self):
        """
        The events kept go in one batch at the next tick (0.2 s); a tick with nothing
        to say sends nothing.
        """
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        self.clock.advance(BATCH_INTERVAL * 0.75)
        self.assertEqual(self.channel.calls, [])
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5001))
        self.clock.advance(BATCH_INTERVAL * 0.5)
        [batch] = self.channel.batches()
        self.assertEqual([(e[0], e[8]) for e in batch], [("o", 5000), ("o", 5001)])
        self.assertEqual(self.feed.events, [])
        self.clock.advance(BATCH_INTERVAL * 5)
        self.assertEqual(len(self.channel.calls), 1)

    def test_sizeTrigger(self):
        """
        The 512th event sends the batch at once, before any tick.
        """
        for port in range(BATCH_SIZE - 1):
            self.registry.open("echo", "echo", "tcp", LOCAL, peer(10000 + port))
        self.assertEqual(self.channel.calls, [])
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(9999))
        [batch] = self.channel.batches()
        self.assertEqual(len(batch), BATCH_SIZE)
        self.assertEqual(self.feed.events, [])

    def test_openedAndClosedInOneBatchSentOnce(self):
        """
        A connection opened and closed within one batch is one entry: the open, with
        its close time, reason and last counts; its close event is not sent apart.
        """
        record = self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        record.bytesIn, record.bytesOut = 11, 12
        self.clock.advance(0.05)
        self.registry.close(record, CLIENT_CLOSED)
        self.clock.advance(BATCH_INTERVAL)
        [[entry]] = self.channel.batches()
        self.assertEqual(entry, ["o", record.serial, "tcp", "echo", "echo", "127.0.0.1", 7,
                                 "127.0.0.2", 5000, 1000.0, None, [11, 12], None,
                                 1000.05, CLIENT_CLOSED])

    def test_closeOfEarlierOpen(self):
        """
        A connection opened in one batch and closed in a later one: its close entry
        carries its serial, last counts, close time and reason.
        """
        record = self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        self.clock.advance(BATCH_INTERVAL)
        record.bytesIn = 3
        self.registry.close(record, CLIENT_CLOSED)
        self.clock.advance(BATCH_INTERVAL)
        opened, closed = self.channel.batches()
        self.assertEqual(opened[0][:2], ["o", record.serial])
        self.assertEqual(opened[0][-2:], [None, None])
        self.assertEqual(closed, [["c", record.serial, [3, 0], None, 1000.2,
                                   CLIENT_CLOSED]])

    def test_proxiedAndOutbound(self):
        """
        The proxy of a connection a proxy carried, and the connection the server
        opened on its behalf, go as plain values.
        """
        record = self.registry.open("fwd", "forward", "tcp", LOCAL, peer(5000),
                                    proxy=Endpoint("10.0.0.1", 40000))
        out = self.registry.openOutbound(record, Endpoint("127.0.0.1", 50000),
                                         Endpoint("192.0.2.1", 80))
        out.bytesOut = 5
        self.clock.advance(BATCH_INTERVAL)
        [[entry, counter]] = self.channel.batches()
        self.assertEqual(entry[10], ["10.0.0.1", 40000])
        self.assertEqual(entry[12], [out.serial, "127.0.0.1", 50000, "192.0.2.1", 80,
                                     1000.0, 0, 5, None, None])
        self.assertEqual(counter, ["x", "fwd", 1])

    def test_refusals(self):
        """
        Refusals, which no event carries, go as the change of each (service, reason)
        count since the last batch; nothing when none changed.
        """
        self.registry.refuse("echo", "denied")
        self.registry.refuse("echo", "denied")
        self.registry.refuse("echo", "max-connections")
        self.clock.advance(BATCH_INTERVAL)
        self.registry.refuse("echo", "denied")
        self.clock.advance(BATCH_INTERVAL)
        self.clock.advance(BATCH_INTERVAL)
        self.assertEqual(self.channel.batches(), [
            [["r", "echo", "denied", 2], ["r", "echo", "max-connections", 1]],
            [["r", "echo", "denied", 1]],
        ])

    def test_flows(self):
        """
        A UDP flow's entries carry its datagram counts and last-seen time; flows
        evicted or closed at shutdown are closes like any.
        """
        self.registry.udpMaxFlows = 1
        first = self.registry.flow("echo", "echo", LOCAL, peer(6000))
        first.datagramsIn, first.bytesIn = 2, 8
        self.clock.advance(BATCH_INTERVAL)
        second = self.registry.flow("echo", "echo", LOCAL, peer(6001))
        self.registry.closeFlows(SHUTDOWN)
        self.clock.advance(BATCH_INTERVAL)
        opened, later = self.channel.batches()
        self.assertEqual(opened[0][11], [8, 0, 2, 0, 1000.0])
        self.assertEqual(later, [
            ["c", first.serial, [8, 0, 2, 0, 1000.0], None, 1000.2, EVICTED],
            ["o", second.serial, "udp", "echo", "echo", "127.0.0.1", 7, "127.0.0.2",
             6001, 1000.2, None, [0, 0, 0, 0, 1000.2], None, 1000.2, SHUTDOWN],
        ])

    def test_notConnectedKeeps(self):
        """
        While the channel is not connected, events are kept, not lost.
        """
        self.channel.connected = False
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        self.clock.advance(BATCH_INTERVAL)
        self.assertEqual(self.channel.calls, [])
        self.channel.connected = True
        self.clock.advance(BATCH_INTERVAL)
        self.assertEqual(len(self.channel.batches()[0]), 1)

    def test_sendFailureLogged(self):
        """
        A batch the main process does not take is logged, as a warning.
        """
        failed = Deferred()
        self.channel.answers.append(failed)
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        self.clock.advance(BATCH_INTERVAL)
        with capturedLogs() as events:
            failed.errback(RuntimeError("gone"))
        [event] = events
        self.assertEqual(formatEvent(event), "The main process did not take 1 registry "
                                             "event(s): gone")

    def test_stop(self):
        """
        L{RegistryFeed.stop} stops listening and ticking, sends what is left, and
        fires once the main process has it.
        """
        answer = Deferred()
        self.channel.answers.append(answer)
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        stopped = self.feed.stop()
        self.assertEqual(len(self.channel.batches()), 1)
        self.assertNoResult(stopped)
        answer.callback({})
        self.successResultOf(stopped)
        self.registry.open("echo", "echo", "tcp", LOCAL, peer(5001))
        self.clock.advance(BATCH_INTERVAL * 3)
        self.assertEqual((len(self.channel.calls), self.feed.events), (1, []))

    def test_stopWithNothingLeft(self):
        """
        Stopping with nothing to say fires at once.
        """
        self.successResultOf(self.feed.stop())
        self.assertEqual(self.channel.calls, [])

    def test_feedPart(self):
        """
        L{feedPart}, the worker's part, starts a feed of the server's registry whose
        last batch is sent before the worker's reactor shuts down, and has a
        C{locator()} for its channel.
        """
        reactor = PortReactor()

        class Server:
            pass
        server = Server()
        server.reactor, server.registry = reactor, Registry(reactor)
        feed = feedPart(server, self.channel, 0)
        self.assertIs(feed.registry, server.registry)
        self.assertIsInstance(feed.locator(), amp.CommandLocator)
        [trigger] = reactor.triggers["before"]["shutdown"]
        self.assertEqual(trigger[0], feed.stop)
        server.registry.open("echo", "echo", "tcp", LOCAL, peer(5000))
        reactor.advance(BATCH_INTERVAL)
        self.assertEqual(len(self.channel.batches()), 1)


class BigBytesTests(SynchronousTestCase):
    """
    L{BigBytes} spreads a value longer than an AMP value may be over several keys.
    """

    def box(self, value: bytes) -> dict:
        strings: dict = {}
        BigBytes().toBox(b"events", strings, {"events": value}, None)
        return strings

    def test_small(self):
        """
        A value up to 65,535 bytes is one key, as AMP's own.
        """
        self.assertEqual(self.box(b"x" * 65535), {b"events": b"x" * 65535})
        self.assertEqual(self.box(b""), {b"events": b""})

    def test_split(self):
        """
        A longer value goes as C{events}, C{events.1}, ..., each at most 65,535 bytes,
        and comes back whole (other keys left alone).
        """
        value = bytes(range(256)) * 600  # 153,600 bytes
        strings = self.box(value)
        self.assertEqual(sorted(strings), [b"events", b"events.1", b"events.2"])
        self.assertEqual([len(v) for v in strings.values()], [65535, 65535, 22530])
        strings[b"other"] = b"kept"
        objects: dict = {}
        BigBytes().fromBox(b"events", strings, objects, None)
        self.assertEqual(objects, {"events": value})
        self.assertEqual(strings, {b"other": b"kept"})


class Sides:
    """
    A worker's registry and feed, and the main process's mirror and view, their
    channels connected by an L{iosim} pump; the worker is index C{index}, pid C{pid}.
    """

    def __init__(self, clock, view: WorkerView, index: int = 0, pid: int = 4242):
        self.registry = Registry(clock)
        self.main, self.worker = Channel(), Channel()
        self.pump = connect(self.main, makeFakeServer(self.main),
                            self.worker, makeFakeClient(self.worker), greet=False)
        self.main.locators.append(view.locator(index, pid, self.main))
        view.workerStarted(index, pid, self.main)
        self.feed = RegistryFeed(self.registry, self.worker, clock)
        self.worker.locators.append(self.feed.locator())
        self.feed.start()

    def open(self, port: int, service: str = "echo"):
        return self.registry.open(service, service, "tcp", LOCAL, peer(port))


class MirrorTests(SynchronousTestCase):
    """
    The main process's L{WorkerView} over a L{MirrorRegistry}, fed by workers over real
    AMP.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.mirror = MirrorRegistry(self.clock)
        self.view = WorkerView(self.mirror)
        self.one = Sides(self.clock, self.view)
        self.events: list[tuple] = []
        self.mirror.subscribe(lambda event, record: self.events.append((event, record)))

    def tick(self, *sides: Sides):
        self.clock.advance(BATCH_INTERVAL)
        for side in sides or (self.one,):
            side.pump.flush()

    def test_recordsCarryWorkerAndPid(self):
        """
        A worker's live connection is in the mirror with the worker's index and pid,
        and an id of the mirror's; the mirror announces it as opened.
        """
        record = self.one.open(5000)
        record.bytesIn = 4
        self.tick()
        [mirrored] = self.mirror.query()
        self.assertEqual(mirrored, {
            "id": "tcp-1", "service": "echo", "protocol": "echo", "transport": "tcp",
            "local": {"host": "127.0.0.1", "port": 7, "class": "well-known",
                      "privileged": True},
            "remote": {"host": "127.0.0.2", "port": 5000, "class": "registered",
                       "privileged": False},
            "opened": 1000.0, "bytes_in": 4, "bytes_out": 0, "worker": 0, "pid": 4242})
        self.assertEqual([e for e, _ in self.events], [OPEN])
        self.assertEqual(self.mirror.accepted, {("echo", "tcp"): 1})

    def test_closeApplied(self):
        """
        A close reaches the mirror with the worker's close time, reason and counts:
        the record leaves the live ones, joins the recently closed, is counted, and
        announced (as the connection log hears it).
        """
        record = self.one.open(5000)
        self.tick()
        record.bytesIn, record.bytesOut = 5, 6
        self.clock.advance(0.05)
        self.one.registry.close(record, CLIENT_CLOSED)
        self.tick()
        self.assertEqual(len(self.mirror), 0)
        [closed] = self.mirror.query(state=CLOSED)
        self.assertEqual((closed["closed"], closed["reason"], closed["bytes_in"],
                          closed["bytes_out"], closed["worker"], closed["pid"]),
                         (1000.25, CLIENT_CLOSED, 5, 6, 0, 4242))
        self.assertEqual(self.mirror.closedTotal, {("echo", "tcp", CLIENT_CLOSED): 1})
        self.assertEqual((self.mirror.bytesIn, self.mirror.bytesOut),
                         ({("echo", "tcp"): 5}, {("echo", "tcp"): 6}))
        self.assertEqual([e for e, _ in self.events], [OPEN, CLOSED])

    def test_openedAndClosedInOneBatch(self):
        """
        A connection the mirror hears of only once closed is counted accepted and
        closed, and is in the recently closed, never live.
        """
        record = self.one.open(5000)
        self.one.registry.close(record, CLIENT_CLOSED)
        self.tick()
        self.assertEqual(len(self.mirror), 0)
        self.assertEqual([r["reason"] for r in self.mirror.query(state=CLOSED)],
                         [CLIENT_CLOSED])
        self.assertEqual(self.mirror.summary()["accepted_total"], 1)

    def test_refreshFlushes(self):
        """
        L{WorkerView.refresh} fires once every worker has answered L{Flush} with what
        it had (events not yet sent, and live counts changed since): the mirror then
        has every connection opened before it was called.
        """
        record = self.one.open(5000)
        self.tick()
        record.bytesIn = 9
        self.one.open(5001)
        refreshed = self.view.refresh()
        self.assertNoResult(refreshed)
        self.one.pump.flush()
        self.successResultOf(refreshed)
        self.assertEqual({(r["remote"]["port"], r["bytes_in"]) for r in self.mirror.query()},
                         {(5000, 9), (5001, 0)})

    def test_flushSaysOnlyChangedCounts(self):
        """
        A flush repeats no live counts that did not change since the last one.
        """
        record = self.one.open(5000)
        record.bytesIn = 1
        self.assertEqual([e[0] for e in decodeEntries(self.one.feed.flush())], ["o", "u"])
        self.assertEqual(decodeEntries(self.one.feed.flush()), [])
        record.bytesOut = 2
        self.assertEqual(decodeEntries(self.one.feed.flush()),
                         [["u", record.serial, [1, 2], None]])

    def test_refreshWithoutWorkers(self):
        """
        With no worker, a refresh fires at once.
        """
        self.successResultOf(WorkerView(MirrorRegistry(self.clock)).refresh())

    def test_refreshTimeout(self):
        """
        A worker that does not answer holds a refresh back for L{FLUSH_TIMEOUT} seconds
        at most (logged); its answer, when it comes, is still applied.
        """
        self.one.open(5000)
        refreshed = self.view.refresh()
        self.clock.advance(FLUSH_TIMEOUT)
        self.successResultOf(refreshed)
        self.assertEqual(len(self.mirror), 0)
        self.one.pump.flush()
        self.assertEqual(len(self.mirror), 1)

    def test_bigBatches(self):
        """
        Batches and flush answers longer than one AMP value (64 KiB) arrive whole.
        """
        sizes = []
        mirror = self.view.workers[4242]
        apply = mirror.apply
        mirror.apply = lambda data: (sizes.append(len(data)), apply(data))
        for port in range(BATCH_SIZE * 2 - 1):
            record = self.one.open(10000 + port, service=f"service-{port}-" + "x" * 150)
            record.bytesIn = 1
        self.one.pump.flush()
        self.assertEqual(len(self.mirror), BATCH_SIZE)
        refreshed = self.view.refresh()
        self.one.pump.flush()
        self.successResultOf(refreshed)
        self.assertEqual(len(self.mirror), BATCH_SIZE * 2 - 1)
        self.assertEqual({r["bytes_in"] for r in self.mirror.query()}, {1})
        self.assertEqual(len(sizes), 2)
        self.assertGreater(min(sizes), 65535)

    def test_counters(self):
        """
        Refusals and outbound connections opened are added to the mirror's counters,
        and so to its summary.
        """
        self.one.registry.refuse("echo", "denied")
        inbound = self.one.open(5000)
        self.one.registry.openOutbound(inbound, Endpoint("127.0.0.1", 50000),
                                       Endpoint("192.0.2.1", 80))
        self.tick()
        self.assertEqual(self.mirror.refused, {("echo", "denied"): 1})
        self.assertEqual(self.mirror.outboundOpened, {"echo": 1})
        self.assertEqual(self.mirror.summary()["refused_by_reason"], {"denied": 1})

    def test_outboundAndProxy(self):
        """
        The mirrored record shows the connection the server opened on its behalf, with
        its counts as they change, and the proxy that carried it.
        """
        inbound = self.one.registry.open("fwd", "forward", "tcp", LOCAL, peer(5000),
                                         proxy=Endpoint("10.0.0.1", 40000))
        out = self.one.registry.openOutbound(inbound, Endpoint("127.0.0.1", 50000),
                                             Endpoint("192.0.2.1", 80))
        self.tick()
        out.bytesOut = 7
        self.one.registry.close(out, "server-closed")
        self.successResultOf(self.refreshed())
        [mirrored] = self.mirror.query()
        self.assertEqual(mirrored["proxy"], {"host": "10.0.0.1", "port": 40000})
        self.assertEqual((mirrored["outbound"]["remote"]["port"],
                          mirrored["outbound"]["bytes_out"], mirrored["outbound"]["reason"],
                          mirrored["outbound"]["inbound"]), (80, 7, "server-closed", "tcp-1"))
        self.one.registry.close(inbound, CLIENT_CLOSED)
        self.tick()
        [record] = self.mirror.recentlyClosed()
        self.assertIn("proxy=10.0.0.1:40000 via=127.0.0.1:50000->192.0.2.1:80 "
                      "server-closed in=0 out=7", formatLine(record, "T"))

    def refreshed(self) -> Deferred:
        refreshed = self.view.refresh()
        self.one.pump.flush()
        return refreshed

    def test_flows(self):
        """
        A worker's UDP flows are mirrored with their counts; flows of two workers with
        the same peer are two flows.
        """
        two = Sides(self.clock, self.view, index=1, pid=4343)
        for side in (self.one, two):
            flow = side.registry.flow("echo", "echo", LOCAL, peer(6000))
            flow.datagramsIn, flow.bytesIn = 3, 12
        self.tick(self.one, two)
        flows = self.mirror.query(transport="udp")
        self.assertEqual(sorted((f["worker"], f["datagrams_in"], f["bytes_in"])
                                for f in flows), [(0, 3, 12), (1, 3, 12)])
        self.one.registry.closeFlows(SHUTDOWN)
        self.tick(self.one, two)
        self.assertEqual([f["worker"] for f in self.mirror.query(transport="udp")], [1])
        self.assertEqual(self.mirror.liveByWorker(), {4343: 1})

    def test_workerLost(self):
        """
        When a worker is lost, its live connections in the mirror are closed with
        reason C{worker-lost} (logged; the connection log hears of each), other
        workers' are untouched, and a late batch from it is dropped.
        """
        two = Sides(self.clock, self.view, index=1, pid=4343)
        self.one.open(5000)
        self.one.open(5001)
        two.open(5002)
        self.tick(self.one, two)
        self.events.clear()
        self.view.workerLost(0, 4242, "worker-lost")
        self.assertEqual([r["pid"] for r in self.mirror.query()], [4343])
        lost = self.mirror.query(state=CLOSED)
        self.assertEqual([(r["reason"], r["worker"]) for r in lost],
                         [(WORKER_LOST, 0), (WORKER_LOST, 0)])
        self.assertEqual([e for e, _ in self.events], [CLOSED, CLOSED])
        self.assertIn(" worker-lost ", formatLine(self.events[0][1], "T"))
        self.assertEqual(self.mirror.closedTotal, {("echo", "tcp", WORKER_LOST): 2})
        self.one.open(5003)
        self.tick()
        self.assertEqual(len(self.mirror), 1)
        self.assertNotIn(4242, self.view.workers)

    def test_retiredWorkerLeftovers(self):
        """
        A worker asked to go sends its closes before it exits; any record still live
        when it is gone was lost with it: closed C{worker-lost} too.
        """
        self.one.open(5000)
        self.tick()
        self.view.workerLost(0, 4242, "retired")
        self.assertEqual([r["reason"] for r in self.mirror.query(state=CLOSED)],
                         [WORKER_LOST])

    def test_restartedIndex(self):
        """
        A worker restarted as the same index (a new pid) starts afresh: its serials,
        which start again at 1, never reach the lost one's records.
        """
        self.one.open(5000)
        self.tick()
        self.view.workerLost(0, 4242, "worker-lost")
        again = Sides(self.clock, self.view, index=0, pid=5151)
        again.open(6000)
        self.tick(again)
        self.assertEqual([(r["remote"]["port"], r["pid"]) for r in self.mirror.query()],
                         [(6000, 5151)])
        self.assertEqual(self.mirror.acceptedByWorker, {0: 2})

    def test_badBatchLogged(self):
        """
        A batch the main process cannot read is logged and answered, and the channel
        goes on.
        """
        self.one.worker.callRemote(Events, events=b"not a batch")
        self.one.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.one.open(5000)
        self.tick()
        self.assertEqual(len(self.mirror), 1)

    def test_workerRows(self):
        """
        L{workerRows}: the server's C{workerStates()}, each with its live connections
        and flows in the mirror (by pid).
        """
        self.one.open(5000)
        self.one.registry.flow("echo", "echo", LOCAL, peer(6000))
        self.tick()

        class Server:
            registry = self.mirror

            def workerStates(self):
                return [{"index": 0, "pid": 4242, "state": "serving", "restarts": 0},
                        {"index": 1, "pid": None, "state": "restarting", "restarts": 2}]
        self.assertEqual([(r["index"], r["connections"]) for r in workerRows(Server())],
                         [(0, 2), (1, 0)])


class MirrorPartTests(SynchronousTestCase):
    """
    L{mirrorPart}, the main process's part.
    """

    def test_setsRegistry(self):
        """
        It makes a L{MirrorRegistry} with the config's registry settings, on the
        supervisor's reactor, and puts it in C{supervisor.registry}.
        """
        reactor = PortReactor()

        class Supervisor:
            plan = makePlan(spec("echo", port=7))
        supervisor = Supervisor()
        supervisor.reactor = reactor
        view = mirrorPart(supervisor)
        self.assertIsInstance(supervisor.registry, MirrorRegistry)
        self.assertIs(view.registry, supervisor.registry)
        self.assertIs(view.clock, reactor)
        self.assertEqual(supervisor.registry.udpMaxFlows,
                         supervisor.plan.config.registry.udpMaxFlows)

"""
Tests for L{portserver.quota}: the global C{max_connections} and C{max_per_source} of a
server with workers. The main process's L{Broker} and each simulated worker's L{Leases}
(with a real L{Admission} and L{Registry}) talk AMP in one process, over
L{twisted.test.iosim} pumps; time is a L{Clock}.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from portserver.admission import MAX_CONNECTIONS, MAX_PER_SOURCE, Admission, Pending
from portserver.limits import AccessRules, Limits
from portserver.quota import (
    CHUNK,
    RECLAIM_TIMEOUT,
    RETURN_DELAY,
    Broker,
    Rows,
    Leases,
    grantSize,
    workerPart,
)
from portserver.registry import Registry

A, B, C = "203.0.113.5", "198.51.100.9", "192.0.2.1"


class Channel(amp.AMP):
    """
    An AMP channel as the supervisor's (the seam of C{portserver.workerproto}): extra
    responders in C{locators}; it counts the commands it receives by name.
    """

    def __init__(self):
        super().__init__()
        self.locators: list = []
        self.received: Counter = Counter()

    def locateResponder(self, name):
        for locator in self.locators:
            responder = locator.locateResponder(name)
            if responder is not None:
                return responder
        return super().locateResponder(name)

    def ampBoxReceived(self, box):
        if amp.COMMAND in box:
            self.received[box[amp.COMMAND].decode()] += 1
        super().ampBoxReceived(box)


class Worker:
    """
    One simulated worker: an L{Admission} for service C{"echo"} with L{Leases}, its
    own L{Registry}, and its channel to the main process (C{main}, the main side).
    """

    def __init__(self, world: "World", index: int, limits: Limits):
        self.index, self.pid = index, 1000 + index
        self.main, self.channel = Channel(), Channel()
        self.pump = iosim.connect(self.main, iosim.FakeTransport(self.main, True),
                                  self.channel, iosim.FakeTransport(self.channel, False),
                                  clock=world.clock)
        self.main.locators.append(world.broker.locator(self.index, self.pid, self.main))
        world.broker.workerStarted(self.index, self.pid, self.main)
        self.registry = Registry(world.clock)
        self.events: list[dict] = []
        self.admission = Admission("echo", limits, AccessRules(), world.clock,
                                   self.registry, log=Logger(observer=self.events.append))
        self.leases = Leases(self.channel, world.clock)
        self.admission.useLeases(self.leases.forService("echo"))
        self.channel.locators.append(self.leases.locator())

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class World:
    """
    A L{Broker} and C{count} workers whose admissions have C{limits}; a L{Clock}.
    """

    def __init__(self, limits: Limits, count: int = 2):
        self.clock = Clock()
        self.clock.advance(1000)
        self.broker = Broker(self.clock)
        self.workers = [Worker(self, index, limits) for index in range(count)]

    def flush(self) -> None:
        """
        Deliver everything in flight both ways, and run the calls due this turn, until
        nothing moves.
        """
        while True:
            self.clock.advance(0)
            moved = [w.pump.pump() for w in self.workers]
            if not any(moved):
                return

    def admit(self, worker: int, host: str):
        """
        Admit a connection from C{host} on worker C{worker}, waiting for the main
        process if it must: the verdict (L{None}: admitted, else the reason).
        """
        verdict = self.workers[worker].admission.admit(host)
        if isinstance(verdict, Pending):
            told = []
            verdict.whenDecided(told.append)
            self.flush()
            [verdict] = told
        return verdict

    def release(self, worker: int, host: str) -> None:
        self.workers[worker].admission.release(host)
        self.flush()

    def returnsDue(self) -> None:
        """
        Let the idle slots kept for a while go back (L{RETURN_DELAY}).
        """
        self.flush()
        self.clock.advance(RETURN_DELAY)
        self.flush()

    def acquires(self) -> int:
        return sum(w.main.received["Acquire"] for w in self.workers)


class RowsTests(SynchronousTestCase):
    """
    L{Rows}, the compact AMP argument of the batches.
    """

    def test_roundTrip(self):
        """
        Rows of strings (empty ones too) and integers come back as sent; no rows is
        an empty value.
        """
        rows = Rows((str, str, int))
        sent = [("echo", "", 1), ("echo", "2001:db8::/64", 0)]
        self.assertEqual(rows.fromString(rows.toString(sent)), sent)
        self.assertEqual((rows.toString([]), rows.fromString(b"")), (b"", []))

    def test_separatorsRefused(self):
        """
        A field holding a tab or a line break is refused before it is sent (it would
        read back as other rows).
        """
        rows = Rows((str, int))
        self.assertRaises(ValueError, rows.toString, [("a\tb", 1)])
        self.assertRaises(ValueError, rows.toString, [("a\nb", 1)])
        self.assertRaises(ValueError, rows.fromString, b"a\t1\tb")


class GrantSizeTests(SynchronousTestCase):
    """
    L{grantSize}: exact for small limits, chunks for large ones.
    """

    def test_small(self):
        """
        With little left (under twice the workers), one slot is granted (and may be
        kept idle while the broker does not ask for it): a small limit is counted one
        slot at a time.
        """
        self.assertEqual(grantSize(3, 2), (1, 1))
        self.assertEqual(grantSize(1, 16), (1, 1))

    def test_large(self):
        """
        With much left, a grant is C{free // (2 * workers)}, at most L{CHUNK}.
        """
        self.assertEqual(grantSize(100, 2), (25, 25))
        self.assertEqual(grantSize(100000, 2), (CHUNK, CHUNK))


class PerSourceTests(SynchronousTestCase):
    """
    C{max_per_source} across workers.
    """

    def test_fourthRefused(self):
        """
        With two workers and C{max_per_source: 3}, three connections from one source
        (two on one worker, one on the other) are admitted; a fourth is refused
        C{"max-per-source"} on either worker, counted in that worker's registry and
        logged as one process logs it; another source is admitted meanwhile.
        """
        world = World(Limits(maxPerSource=3))
        self.assertEqual([world.admit(0, A), world.admit(0, A), world.admit(1, A)],
                         [None] * 3)
        self.assertEqual(world.admit(1, A), MAX_PER_SOURCE)
        self.assertEqual(world.admit(0, A), MAX_PER_SOURCE)
        self.assertEqual(world.workers[1].registry.refused, {("echo", MAX_PER_SOURCE): 1})
        self.assertEqual(world.workers[1].lines(),
                         [f"refused 1 connection to echo from {A}: max-per-source"])
        self.assertIsNone(world.admit(1, B))
        self.assertEqual(world.broker.granted("echo", A), 3)

    def test_admittedAfterClose(self):
        """
        Once one of the three connections ends (on one worker), a fourth from that
        source is admitted on the other; the count never goes past 3.
        """
        world = World(Limits(maxPerSource=3))
        for worker in (0, 0, 1):
            self.assertIsNone(world.admit(worker, A))
        self.assertEqual(world.admit(1, A), MAX_PER_SOURCE)
        world.release(0, A)
        self.assertEqual(world.broker.granted("echo", A), 2)
        self.assertIsNone(world.admit(1, A))
        self.assertEqual(world.admit(0, A), MAX_PER_SOURCE)
        self.assertEqual(world.broker.granted("echo", A), 3)

    def test_sourceForgotten(self):
        """
        When a source's last connection ends, its slots go back within
        L{RETURN_DELAY} and neither process keeps anything about it.
        """
        world = World(Limits(maxPerSource=3))
        self.assertIsNone(world.admit(0, A))
        world.release(0, A)
        self.assertEqual(world.broker.granted("echo", A), 1)
        world.returnsDue()
        self.assertEqual(world.broker.granted("echo", A), 0)
        self.assertEqual(world.broker.pools["echo"].sources, {})
        self.assertEqual(world.workers[0].leases.services["echo"].sources, {})

    def test_largePerSourceReturnedLater(self):
        """
        With a large C{max_per_source}, a source gets a chunk; once its last connection
        here ends, its slots go back within L{RETURN_DELAY}, not at once (a client that
        comes back soon costs no round trip).
        """
        world = World(Limits(maxPerSource=100))
        self.assertIsNone(world.admit(0, A))
        self.assertEqual(world.broker.granted("echo", A), 25)
        world.release(0, A)
        self.assertEqual(world.broker.granted("echo", A), 25)
        self.assertIsNone(world.admit(0, A))
        world.release(0, A)
        self.assertEqual(world.acquires(), 1)
        world.returnsDue()
        self.assertEqual(world.broker.granted("echo", A), 0)
        self.assertEqual(world.workers[0].leases.services["echo"].sources, {})

    def test_ipv6Network(self):
        """
        Two addresses of one IPv6 /64 are one source across workers.
        """
        world = World(Limits(maxPerSource=2))
        self.assertIsNone(world.admit(0, "2001:db8:1:2::1"))
        self.assertIsNone(world.admit(1, "2001:db8:1:2::2"))
        self.assertEqual(world.admit(0, "2001:db8:1:2::3"), MAX_PER_SOURCE)
        self.assertEqual(world.broker.granted("echo", "2001:db8:1:2::/64"), 2)
        world.release(1, "2001:db8:1:2::2")
        self.assertIsNone(world.admit(0, "2001:db8:1:2::3"))

    def test_rateTokenGivenBack(self):
        """
        A connection the main process refuses takes no token of C{rate_per_source}, as
        one process refuses it before its rate is counted.
        """
        world = World(Limits(maxPerSource=1, ratePerSource=1, rateBurst=2))
        self.assertIsNone(world.admit(0, A))
        self.assertEqual(world.admit(1, A), MAX_PER_SOURCE)
        world.release(0, A)
        self.assertIsNone(world.admit(1, A))


class MaxConnectionsTests(SynchronousTestCase):
    """
    C{max_connections} across workers.
    """

    def test_limit(self):
        """
        With C{max_connections: 3} and two workers, three connections from three
        sources are admitted; a fourth is refused C{"max-connections"} on either
        worker; after one ends, a fourth is admitted.
        """
        world = World(Limits(maxConnections=3))
        self.assertEqual([world.admit(0, A), world.admit(1, B), world.admit(0, C)],
                         [None] * 3)
        self.assertEqual(world.admit(1, "192.0.2.9"), MAX_CONNECTIONS)
        self.assertEqual(world.admit(0, "192.0.2.9"), MAX_CONNECTIONS)
        self.assertEqual(world.workers[1].registry.refused, {("echo", MAX_CONNECTIONS): 1})
        world.release(1, B)
        self.assertIsNone(world.admit(0, "192.0.2.9"))
        self.assertEqual(world.admit(1, B), MAX_CONNECTIONS)

    def test_noRoundTripWithRoom(self):
        """
        A worker asks the main process only when its lease is used up: with
        C{max_connections: 1000}, the first connection asks once and gets 64 slots; the
        63 next cost no round trip; the 65th asks again.
        """
        world = World(Limits(maxConnections=1000))
        self.assertIsNone(world.admit(0, A))
        self.assertEqual(world.acquires(), 1)
        self.assertEqual(world.broker.granted("echo"), CHUNK)
        for _ in range(CHUNK - 1):
            self.assertIsNone(world.workers[0].admission.admit(A))
        self.assertEqual(world.acquires(), 1)
        self.assertIsInstance(world.workers[0].admission.admit(A), Pending)
        world.flush()
        self.assertEqual(world.acquires(), 2)

    def test_idleSlotsReclaimed(self):
        """
        Slots another worker keeps idle are given back when the main process runs
        short, so a worker is refused only what one process would refuse: worker 0
        takes 16 slots of 20 and frees them, worker 1 is then admitted 20 times and
        refused the 21st.
        """
        world = World(Limits(maxConnections=20))
        for _ in range(16):
            self.assertIsNone(world.admit(0, A))
        for _ in range(16):
            world.release(0, A)
        self.assertGreater(world.broker.granted("echo"), 0)  # kept by worker 0
        self.assertEqual([world.admit(1, B) for _ in range(21)],
                         [None] * 20 + [MAX_CONNECTIONS])
        self.assertEqual(world.broker.granted("echo"), 20)
        self.assertEqual(world.workers[0].main.received["Reclaim"], 0)
        self.assertEqual(world.workers[0].channel.received["Reclaim"], 1)

    def test_contendedAnsweredAtOnce(self):
        """
        Once the workers holding slots were asked for their idle ones, the main process
        refuses at the limit without asking them again, and they give back each slot
        as it is freed.
        """
        world = World(Limits(maxConnections=20))
        for _ in range(16):
            world.admit(0, A)
        for _ in range(4):
            world.admit(1, B)
        self.assertEqual(world.admit(1, B), MAX_CONNECTIONS)
        self.assertEqual(world.admit(1, B), MAX_CONNECTIONS)
        self.assertEqual(world.workers[0].channel.received["Reclaim"], 1)
        world.release(0, A)
        self.assertEqual(world.broker.granted("echo"), 19)
        self.assertIsNone(world.admit(1, B))

    def test_neverPastLimit(self):
        """
        Whatever the order of admissions and releases on three workers, the slots
        granted never pass the limit, no worker admits past it, and once every
        connection has ended and the returns are due, every slot is back.
        """
        world = World(Limits(maxConnections=50, maxPerSource=7), count=3)
        rng = random.Random(18)
        live: list[tuple[int, str]] = []
        hosts = [f"192.0.2.{i}" for i in range(12)]
        for _ in range(2000):
            if live and rng.random() < 0.45:
                worker, host = live.pop(rng.randrange(len(live)))
                world.workers[worker].admission.release(host)
            else:
                worker, host = rng.randrange(3), rng.choice(hosts)
                verdict = world.admit(worker, host)
                if verdict is None:
                    live.append((worker, host))
            if rng.random() < 0.3:
                world.flush()
            self.assertLessEqual(world.broker.granted("echo"), 50)
            self.assertLessEqual(len(live), 50)
            for host in hosts:
                self.assertLessEqual(world.broker.granted("echo", host), 7)
                self.assertLessEqual(sum(1 for _, h in live if h == host), 7)
        for worker, host in live:
            world.workers[worker].admission.release(host)
        world.flush()
        world.returnsDue()
        for w in world.workers:  # what each keeps idle, the main process reclaims
            self.assertEqual(w.leases.services["echo"].sources, {})
        self.assertEqual(world.broker.pools["echo"].sources, {})
        self.assertLessEqual(world.broker.granted("echo"), 3 * CHUNK)

    def test_refusesOnlyAtLimit(self):
        """
        When every release has reached the main process before the next connection,
        a connection is refused exactly when one process would refuse it: at 50 live
        (C{"max-connections"}), or at 7 live from its source (C{"max-per-source"}).
        """
        world = World(Limits(maxConnections=50, maxPerSource=7), count=3)
        rng = random.Random(7)
        live: list[tuple[int, str]] = []
        hosts = [f"192.0.2.{i}" for i in range(12)]
        verdicts = Counter()
        for _ in range(2000):
            if live and rng.random() < 0.45:
                worker, host = live.pop(rng.randrange(len(live)))
                world.release(worker, host)
                continue
            worker, host = rng.randrange(3), rng.choice(hosts)
            expected = (MAX_CONNECTIONS if len(live) >= 50
                        else MAX_PER_SOURCE if sum(1 for _, h in live if h == host) >= 7
                        else None)
            verdict = world.admit(worker, host)
            self.assertEqual(verdict, expected)
            verdicts[verdict] += 1
            if verdict is None:
                live.append((worker, host))
        self.assertTrue(all(verdicts[v] > 20 for v in (None, MAX_CONNECTIONS,
                                                        MAX_PER_SOURCE)), verdicts)


class Stalled:
    """
    A channel to a worker that never answers.
    """

    def callRemote(self, command, **kwargs):
        return Deferred()


class LostWorkerTests(SynchronousTestCase):
    """
    A worker that is lost, and a channel that fails.
    """

    def test_slotsReturn(self):
        """
        Every slot a lost worker held returns to the pool: its three connections from
        a source no longer count, and another worker is admitted three times.
        """
        world = World(Limits(maxPerSource=3, maxConnections=10))
        for _ in range(3):
            self.assertIsNone(world.admit(0, A))
        self.assertEqual(world.admit(1, A), MAX_PER_SOURCE)
        world.broker.workerLost(0, 1000, "worker-lost")
        self.assertEqual((world.broker.granted("echo"), world.broker.granted("echo", A)),
                         (0, 0))
        self.assertEqual([world.admit(1, A) for _ in range(4)], [None] * 3 + [MAX_PER_SOURCE])

    def test_lateGrantToLostWorker(self):
        """
        An answer the broker gives a worker already lost grants nothing (it would never
        be given back).
        """
        world = World(Limits(maxConnections=10))
        world.broker.workerLost(0, 1000, "worker-lost")
        answer = world.broker.acquire((0, 1000), "echo", "", 1, 0, 10, 0)
        self.assertEqual(answer[4], "")  # granted (refused "")
        self.assertEqual(world.broker.granted("echo"), 0)

    def test_reclaimTimeout(self):
        """
        A worker that does not answer a L{Reclaim} within L{RECLAIM_TIMEOUT} gives
        back nothing, and the connection that waited on it is answered then.
        """
        world = World(Limits(maxConnections=2))
        self.assertIsNone(world.admit(0, A))
        world.release(0, A)  # worker 0 keeps its slot idle
        self.assertIsNone(world.admit(1, B))
        world.broker.workers[(0, 1000)] = Stalled()
        pending = world.workers[1].admission.admit(C)
        told = []
        pending.whenDecided(told.append)
        world.flush()
        self.assertEqual(told, [])
        world.clock.advance(RECLAIM_TIMEOUT)
        world.flush()
        self.assertEqual(told, [MAX_CONNECTIONS])

    def test_channelFails(self):
        """
        When the main process cannot be asked (the channel is lost), a waiting
        connection is refused for the limit it waited on, and the failure is logged.
        """
        world = World(Limits(maxPerSource=3))
        worker = world.workers[0]
        pending = worker.admission.admit(A)
        told = []
        pending.whenDecided(told.append)
        worker.channel.connectionLost(Failure(ConnectionLost()))
        world.clock.advance(0)  # (requests go at the end of the turn)
        self.assertEqual(told, [MAX_PER_SOURCE])
        self.assertEqual(worker.registry.refused, {("echo", MAX_PER_SOURCE): 1})
        self.assertEqual(worker.admission.live, 0)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionLost)), 1)


class PendingTests(SynchronousTestCase):
    """
    A connection that gives up while it waits.
    """

    def test_cancelReturnsSlot(self):
        """
        A waiting connection that closes takes no slot: the slot granted for it goes
        back to the main process, and it is not counted live nor refused.
        """
        world = World(Limits(maxPerSource=3))
        worker = world.workers[0]
        pending = worker.admission.admit(A)
        told = []
        pending.whenDecided(told.append)
        self.assertEqual(worker.admission.live, 1)
        pending.cancel()
        world.returnsDue()
        self.assertEqual(told, [])
        self.assertEqual(worker.admission.live, 0)
        self.assertEqual(worker.registry.refused, {})
        self.assertEqual(world.broker.granted("echo", A), 0)
        self.assertEqual(worker.leases.services["echo"].sources, {})

    def test_cancelGivesBackSetAside(self):
        """
        A waiting connection that had a slot of the service set aside (it waited for
        its source's) frees it when it closes.
        """
        world = World(Limits(maxConnections=1000, maxPerSource=3))
        worker = world.workers[0]
        self.assertIsNone(world.admit(0, A))
        pending = worker.admission.admit(B)  # a service slot is free here; B's is not
        self.assertIsInstance(pending, Pending)
        leases = worker.leases.services["echo"]
        self.assertEqual(leases.connections.used, 2)
        pending.cancel()
        self.assertEqual(leases.connections.used, 1)
        world.returnsDue()
        self.assertEqual(world.broker.granted("echo", B), 0)

    def test_expire(self):
        """
        A connection whose answer does not come in time is refused for the limit it
        waited on, counted and logged; the slot the late answer grants is idle (the
        other worker is admitted 3 times).
        """
        world = World(Limits(maxConnections=3))
        worker = world.workers[0]
        pending = worker.admission.admit(A)
        told = []
        pending.whenDecided(told.append)
        pending.expire()
        self.assertEqual(told, [MAX_CONNECTIONS])
        self.assertEqual(worker.registry.refused, {("echo", MAX_CONNECTIONS): 1})
        self.assertEqual(worker.admission.live, 0)
        world.flush()
        self.assertEqual(worker.leases.services["echo"].connections.used, 0)
        self.assertEqual([world.admit(1, B) for _ in range(4)], [None] * 3 + [MAX_CONNECTIONS])


class GenerationTests(SynchronousTestCase):
    """
    Limits changed by a reload: each worker asks with its own config's limits.
    """

    def test_newLimitsCountOldConnections(self):
        """
        A new generation whose limit is 5 counts the old generation's 3 connections
        (limit 3): it is admitted twice more; the old one is still refused at 3.
        """
        world = World(Limits(maxPerSource=3))
        for _ in range(3):
            self.assertIsNone(world.admit(0, A))
        new = world.workers[1]
        new.admission.update(Limits(maxPerSource=5), AccessRules())
        self.assertEqual([world.admit(1, A) for _ in range(3)], [None, None, MAX_PER_SOURCE])
        self.assertEqual(world.admit(0, A), MAX_PER_SOURCE)


class SingleProcessTests(SynchronousTestCase):
    """
    Without leases, admission is one process's, at its cost.
    """

    def test_noLeasesNoOverride(self):
        """
        An L{Admission} without leases calls the class's own C{admit} and C{release};
        with leases and then none again, so does it.
        """
        admission = Admission("echo", Limits(maxPerSource=3), AccessRules(), Clock(),
                              Registry(Clock()))
        self.assertNotIn("admit", vars(admission))
        self.assertNotIn("release", vars(admission))
        admission.useLeases(Leases(Channel(), Clock()).forService("echo"))
        self.assertIn("admit", vars(admission))
        admission.useLeases(None)
        self.assertNotIn("admit", vars(admission))
        self.assertNotIn("release", vars(admission))

    def test_workerPart(self):
        """
        L{workerPart} gives every admission of a server its service's leases, and its
        locator answers the main process's C{Reclaim}.
        """
        clock = Clock()

        class Server:
            reactor = clock
            admissions = {name: Admission(name, Limits(), AccessRules(), clock,
                                          Registry(clock)) for name in ("echo", "daytime")}

        part = workerPart(Server, Channel(), 0)
        self.assertEqual({name: a.leases.service for name, a in Server.admissions.items()},
                         {"echo": "echo", "daytime": "daytime"})
        self.assertIsNotNone(part.locator().locateResponder(b"Reclaim"))
        self.assertIsNotNone(Broker(Clock()).locator(0, 1, Channel()).locateResponder(b"Acquire"))

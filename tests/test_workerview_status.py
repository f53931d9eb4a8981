"""
Tests for the status surfaces over the workers' merged view (L{portserver.workerview}):
the status site waits for the server's C{refresh()} before it renders, the summary lists
the workers, the metrics have per-worker series, C{portserver status} shows them; and
one real echo connection served by a worker-side L{PortServer} seen through the main
side's status service over a real socketpair.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from portserver.registry import CLIENT_CLOSED, CLOSED, WORKER_LOST
from portserver.server import PortServer
from portserver.status import cli
from portserver.status.web import StatusService, Summary
from portserver.workerproto import Channel
from portserver.workerview import BATCH_INTERVAL, MirrorRegistry, RegistryFeed, WorkerView
from tests.support import PortReactor, getOK, makePlan, spec
from tests.test_cli import SUMMARY, URL, Run, reply
from tests.test_status_web import (
    DEADLINE,
    STATUS_LISTEN,
    EchoClient,
    Response,
    parseResponse,
    series,
)
from tests.test_workerview import LOCAL, Sides, peer


class WorkersServer(PortServer):
    """
    What the status service reads of a main process with workers, on a L{PortServer}'s
    plan and listeners: the mirror for a registry, C{refresh()} (the view's, counted)
    and C{workerStates()} (C{states}).
    """

    def __init__(self, plan, reactor, view: WorkerView, states: list[dict]):
        super().__init__(plan, reactor)
        self.registry = view.registry  # (not as an argument: an empty one is falsy)
        self.view = view
        self.states = states
        self.refreshes = 0

    def refresh(self):
        self.refreshes += 1
        return self.view.refresh()

    def workerStates(self) -> list[dict]:
        return [dict(state) for state in self.states]


class Exchange:
    """
    One HTTP request sent to a site through a real L{HTTPChannel} on a
    L{StringTransport}, answered whenever the site is ready.
    """

    def __init__(self, site, path: bytes, method: bytes = b"GET"):
        client = IPv4Address("TCP", "127.0.0.9", 40000)
        self.channel = site.buildProtocol(client)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8790), peerAddress=client)
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n")

    def written(self) -> bytes:
        return self.transport.value()

    def response(self) -> Response:
        return parseResponse(self.written())

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


WORKER_STATES = [
    {"index": 0, "pid": 4242, "state": "serving", "restarts": 0, "generation": 1,
     "started": 1000.0},
    {"index": 1, "pid": 4343, "state": "serving", "restarts": 3, "generation": 1,
     "started": 1000.0},
]


class StatusOverMirrorTests(SynchronousTestCase):
    """
    The status service of a server with C{refresh} and C{workerStates}, over a mirror
    fed by two workers (index 0, pid 4242: two connections, one not yet sent; index 1,
    pid 4343: none).
    """

    def setUp(self):
        self.reactor = PortReactor()
        self.reactor.advance(1000)
        plan = makePlan(spec("echo", port=7, transports=("tcp", "udp")))
        self.view = WorkerView(MirrorRegistry(self.reactor, plan.rule))
        self.server = WorkersServer(plan, self.reactor, self.view, WORKER_STATES)
        self.one = Sides(self.reactor, self.view, index=0, pid=4242)
        self.two = Sides(self.reactor, self.view, index=1, pid=4343)
        self.one.open(5000)
        self.reactor.advance(BATCH_INTERVAL)
        self.one.pump.flush()
        self.one.open(5001)  # not sent yet: only a refresh brings it
        self.status = StatusService(self.server, STATUS_LISTEN, self.reactor)
        self.server.privilegedStartService()
        self.status.privilegedStartService()
        self.status.startService()
        self.site = self.reactor.tcpServers[-1][1]

    def get(self, path: bytes, method: bytes = b"GET") -> Response:
        """
        Ask, let the workers answer the flush, and read the answer.
        """
        exchange = Exchange(self.site, path, method)
        self.assertEqual(exchange.written(), b"")
        self.one.pump.flush()
        self.two.pump.flush()
        response = exchange.response()
        exchange.close()
        return response

    def test_connectionsWaitForRefresh(self):
        """
        C{/api/connections} answers once every worker has flushed: it lists the
        connection opened just before the request, each record with C{worker} and
        C{pid}.
        """
        response = self.get(b"/api/connections")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-length"), str(len(response.body)))
        records = response.json()["connections"]
        self.assertEqual([(r["remote"]["port"], r["worker"], r["pid"]) for r in records],
                         [(5000, 0, 4242), (5001, 0, 4242)])
        self.assertEqual(self.server.refreshes, 1)

    def test_head(self):
        """
        A HEAD waits too, and gets GET's headers without a body.
        """
        response = self.get(b"/api/summary", b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"")
        self.assertGreater(int(response.header("content-length")), 0)

    def test_clientGoneMeanwhile(self):
        """
        A client that goes away before the workers answer gets nothing, and nothing
        fails.
        """
        exchange = Exchange(self.site, b"/api/summary")
        exchange.close()
        self.one.pump.flush()
        self.assertEqual(exchange.written(), b"")
        self.assertEqual(len(self.server.registry), 2)

    def test_refreshFailureStillAnswers(self):
        """
        When the refresh fails, the page shows what the main process has (and the
        failure is logged).
        """
        self.server.refresh = lambda: fail(RuntimeError("no workers today"))
        exchange = Exchange(self.site, b"/api/connections")
        response = exchange.response()
        self.assertEqual(response.code, 200)
        self.assertEqual(len(response.json()["connections"]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_renderFailureAfterRefresh(self):
        """
        A page that fails to render once the refresh is over still answers: a 500, as
        Twisted answers a page that fails at once (and the failure is logged).
        """
        def broken(page, request):
            raise RuntimeError("broken page")
        self.patch(Summary, "data", broken)
        response = self.get(b"/api/summary")
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_dataFreePathsAnswerAtOnce(self):
        """
        The page's files, a 404 and a 405 hold nothing of the registry's: they are
        answered at once, without a refresh.
        """
        for path, method, code in ((b"/", b"GET", 200), (b"/static/app.js", b"GET", 200),
                                   (b"/api/nothing", b"GET", 404),
                                   (b"/api/summary", b"POST", 405)):
            exchange = Exchange(self.site, path, method)
            self.assertEqual(exchange.response().code, code, path)
        self.assertEqual(self.server.refreshes, 0)

    def test_summaryWorkers(self):
        """
        C{/api/summary} has the totals over every worker and C{workers}: each worker's
        index, pid, state, restarts, generation, start, and live connections.
        """
        summary = self.get(b"/api/summary").json()
        self.assertEqual(summary["connections"]["total"], 2)
        self.assertEqual(summary["workers"], [
            dict(WORKER_STATES[0], connections=2), dict(WORKER_STATES[1], connections=0)])

    def test_singleProcessUnchanged(self):
        """
        A server without C{refresh} (one process) is rendered synchronously, as
        before, and its summary has no C{workers}.
        """
        server = PortServer(makePlan(spec("echo", port=7)), self.reactor)
        body = Summary(server).render(DummyRequest([]))
        self.assertIsInstance(body, bytes)
        self.assertNotIn("workers", json.loads(body))

    def test_metricsPerWorker(self):
        """
        C{/metrics} has the totals as for one process (over every worker), and per
        worker index: live connections, restarts and accepted connections, with the
        number of worker processes.
        """
        text = self.get(b"/metrics").body.decode("utf-8")
        self.assertEqual(sum(series(text, "portserver_connections").values()), 2)
        self.assertEqual(series(text, "portserver_workers"), {(): 2.0})
        self.assertEqual(series(text, "portserver_worker_connections"),
                         {(("worker", "0"),): 2.0, (("worker", "1"),): 0.0})
        self.assertEqual(series(text, "portserver_worker_restarts_total"),
                         {(("worker", "0"),): 0.0, (("worker", "1"),): 3.0})
        self.assertEqual(series(text, "portserver_worker_connections_accepted_total"),
                         {(("worker", "0"),): 2.0, (("worker", "1"),): 0.0})

    def test_metricsOneSeriesPerIndex(self):
        """
        While a reload runs two generations, the processes of one index make one
        series (their connections summed), and restarts are the index's.
        """
        self.server.states = WORKER_STATES + [
            {"index": 0, "pid": 4444, "state": "starting", "restarts": 0,
             "generation": 2, "started": 1001.0}]
        self.one.registry.flow("echo", "echo", LOCAL, peer(6000))
        text = self.get(b"/metrics").body.decode("utf-8")
        self.assertEqual(series(text, "portserver_workers"), {(): 3.0})
        self.assertEqual(series(text, "portserver_worker_connections"),
                         {(("worker", "0"),): 3.0, (("worker", "1"),): 0.0})

    def test_promtool(self):
        """
        The exposition with the worker series passes C{promtool check metrics}.
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise self.skipTest("promtool is not installed")
        text = self.get(b"/metrics").body
        checked = subprocess.run([promtool, "check", "metrics"], input=text,
                                 capture_output=True)
        self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, b""))

    def test_historyCountsEveryWorker(self):
        """
        The history samples the mirror: its live counts include every worker's
        connections.
        """
        self.get(b"/api/summary")
        self.status.history.sample()
        history = self.get(b"/api/history").json()
        self.assertEqual(history["services"]["echo"]["live"], [2])

    def test_workerLostInRecentlyClosed(self):
        """
        A lost worker's connections are in C{?state=closed} with reason
        C{worker-lost}, and counted in the summary's C{closed_by_reason}.
        """
        self.get(b"/api/summary")
        self.view.workerLost(0, 4242, "worker-lost")
        closed = self.get(b"/api/connections?state=closed").json()["connections"]
        self.assertEqual([(c["reason"], c["worker"]) for c in closed],
                         [(WORKER_LOST, 0), (WORKER_LOST, 0)])
        self.assertEqual(self.get(b"/api/summary").json()["closed_by_reason"],
                         {WORKER_LOST: 2})


WORKERS_SUMMARY = dict(SUMMARY, workers=[
    {"index": 0, "pid": 4101, "state": "serving", "restarts": 0, "generation": 1,
     "started": 1.0, "connections": 3},
    {"index": 1, "pid": None, "state": "restarting", "restarts": 12, "generation": 1,
     "started": None, "connections": 0},
])


def workersReply(url: str) -> dict:
    if url.endswith("/api/summary"):
        return json.loads(json.dumps(WORKERS_SUMMARY))
    return reply(url)


class StatusCommandTests(SynchronousTestCase):
    """
    C{portserver status} shows the workers of a server that has them.
    """

    def test_renderWorkers(self):
        """
        The summary has a line of how many workers run and were restarted, then one
        per worker: index, pid, state, live connections and restarts.
        """
        self.assertEqual(cli.renderWorkers(WORKERS_SUMMARY["workers"]), [
            "workers: 1 running, 12 restart(s)",
            "  worker 0  pid 4101  serving     3 live   0 restarts",
            "  worker 1  pid -     restarting  0 live  12 restarts",
        ])

    def test_noWorkers(self):
        """
        A summary without workers (one process) has no workers lines.
        """
        self.assertEqual(cli.renderWorkers(None), [])
        self.assertEqual(cli.renderWorkers([]), [])
        self.assertNotIn("workers", "\n".join(cli.renderSummary(SUMMARY)))

    def test_statusShowsWorkers(self):
        """
        The report's summary shows the workers, and C{--json} includes them in its
        summary.
        """
        result = Run(["status", "--url", URL], workersReply)
        self.assertEqual(result.status, 0, result.stderr)
        self.assertIn("  workers: 1 running, 12 restart(s)\n"
                      "    worker 0  pid 4101  serving     3 live   0 restarts\n",
                      result.stdout)
        result = Run(["status", "--url", URL, "--json"], workersReply)
        self.assertEqual(json.loads(result.stdout)["summary"]["workers"],
                         WORKERS_SUMMARY["workers"])


class ChannelFactory(Factory):
    def __init__(self, channel):
        self.channel = channel

    def buildProtocol(self, addr):
        return self.channel


class MainView:
    """
    The main side of the live test: the worker server's plan and listeners, the
    mirror, the view's refresh, and one worker (this process).
    """

    def __init__(self, server, view: WorkerView):
        self.server = server
        self.view = view
        self.registry = view.registry

    def __getattr__(self, name):
        return getattr(self.server, name)

    def refresh(self):
        return self.view.refresh()

    def workerStates(self):
        return [{"index": 0, "pid": os.getpid(), "state": "serving", "restarts": 0,
                 "generation": 1, "started": None}]


class LiveTests(TestCase):
    """
    A worker's L{PortServer} serving a real echo connection, its L{RegistryFeed} on a
    real socketpair to a L{WorkerView}, and the status service over the mirror.
    """

    timeout = 60

    def setUp(self):
        self.worker = PortServer(makePlan(spec("echo", port=0, interface="127.0.0.1")),
                                 reactor)
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        mainChannel, workerChannel = Channel(), Channel()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end, channel in ((ours, mainChannel), (theirs, workerChannel)):
            reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX,
                                          ChannelFactory(channel))
            end.close()
        self.addCleanup(lambda: mainChannel.closed)
        self.addCleanup(mainChannel.transport.loseConnection)
        self.view = WorkerView(MirrorRegistry(reactor, self.worker.plan.rule))
        mainChannel.locators.append(self.view.locator(0, os.getpid(), mainChannel))
        self.view.workerStarted(0, os.getpid(), mainChannel)
        self.feed = RegistryFeed(self.worker.registry, workerChannel, reactor)
        workerChannel.locators.append(self.feed.locator())
        self.feed.start()
        self.addCleanup(self.feed.stop)
        self.status = StatusService(MainView(self.worker, self.view),
                                    "tcp:0:interface=127.0.0.1", reactor)
        self.status.privilegedStartService()
        self.status.startService()
        self.addCleanup(self.status.stopService)

    def get(self, path: str):
        return getOK(self, self.status.address.port, path, DEADLINE).addCallback(
            lambda body: json.loads(body) if path.startswith("/api/")
            else body.decode("utf-8"))

    @inlineCallbacks
    def test_connectionSeenThroughTheMirror(self):
        """
        A client's echo connection is listed by the main side's C{/api/connections}
        as soon as it is open, with the worker's index and pid and its bytes so far;
        once closed, in C{?state=closed} as client-closed; counted per worker by the
        metrics.
        """
        client = EchoClient()
        port = self.worker.addressOf("echo").port
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                              client).addTimeout(DEADLINE, reactor)
        client.transport.write(b"hello, echo")
        yield client.echoed(11).addTimeout(DEADLINE, reactor)

        [live] = (yield self.get("/api/connections"))["connections"]
        self.assertEqual((live["service"], live["bytes_in"], live["bytes_out"],
                          live["worker"], live["pid"]), ("echo", 11, 11, 0, os.getpid()))
        self.assertEqual(live["remote"]["port"], client.transport.getHost().port)
        metrics = yield self.get("/metrics")
        self.assertEqual(series(metrics, "portserver_worker_connections"),
                         {(("worker", "0"),): 1.0})
        summary = yield self.get("/api/summary")
        self.assertEqual([(w["index"], w["connections"]) for w in summary["workers"]],
                         [(0, 1)])

        closed = Deferred()
        unsubscribe = self.worker.registry.subscribe(
            lambda event, record: event == CLOSED and not closed.called
            and closed.callback(record))
        client.transport.loseConnection()
        yield closed.addTimeout(DEADLINE, reactor)
        unsubscribe()
        [gone] = (yield self.get("/api/connections?state=closed"))["connections"]
        self.assertEqual((gone["id"], gone["reason"], gone["worker"], gone["bytes_in"]),
                         (live["id"], CLIENT_CLOSED, 0, 11))
        self.assertEqual((yield self.get("/api/connections"))["connections"], [])

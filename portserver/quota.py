"""
The global connection limits of a server with workers: C{max_connections} and
C{max_per_source} hold for the whole server, whichever worker accepts.

The main process holds the counts in a L{Broker}; a worker holds leases of them
(L{Leases}): slots granted by the broker per service (C{max_connections}) and per service
and source (C{max_per_source}; a source is an IPv4 address or an IPv6 network, as
L{portserver.admission.sourceOf} makes it). A worker's L{Admission} admits a connection at
once while its leases have a free slot of each kind it needs; otherwise the connection
waits, not reading (L{portserver.awaiting}), while the worker asks the broker
(L{Acquire}); granted, it is admitted; refused, it is refused for the reason and with the
banner one process gives (C{"max-connections"}, C{"max-per-source"}).

Why leases: asking the main process about every connection would put a round trip (and
the main process) in every accept; a lease costs one only when it runs out. A grant is
C{min(free // (2 * workers), 64)} slots, at least 1, so a small limit is counted one slot
at a time and a large one costs a round trip now and then. The requests of one reactor
turn go in one L{Acquire}, so under load the round trip is shared. A worker may keep as
many idle slots as its last grant was (C{keep}); it gives back the rest, and all of a
source's once it has no connection left there (so neither process holds on to a source
that is gone), within L{RETURN_DELAY}, batched in one L{Return}.

The limit is never exceeded: the broker counts a slot from its grant until the return
arrives. And it refuses only what one process would: short of slots, it first asks
every other worker holding some of that kind for its idle ones (L{Reclaim}); from then
on ("contended", until a grant finds twice the workers' number free again) the holders
keep none idle and give back each slot as it is freed, at the end of the reactor turn,
so the broker answers later requests at once, without asking again.

A lost worker's slots all return to the pool (L{Broker.workerLost}). Each request
carries the limits the asking worker's config sets, and the broker checks the count of
every worker (of every generation) against them: after a reload, a new generation's
connections are admitted by its own limits, counting the old generation's connections
still open, as one process counts the connections it had before a reload. (A reload
that changes C{ipv6_prefix} groups new connections by the new prefix: an IPv6 source's
connections of the old generation count under the old network until they end.)
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.logger import Logger
from twisted.protocols import amp

from portserver.admission import MAX_CONNECTIONS, MAX_PER_SOURCE, Pending
from portserver.ratelog import RepeatedErrors

log = Logger()

#: The most slots one grant gives.
CHUNK = 64
#: Seconds within which a worker gives back idle slots past its C{keep} (or a gone
#: source's), batched; those it may keep none of go at the end of the reactor turn.
RETURN_DELAY = 0.5
#: Sources in one L{Return}, connections in one L{Acquire} (an AMP value is at most
#: 65,535 bytes).
RETURN_BATCH = 128
ACQUIRE_BATCH = 128
#: Seconds the broker waits for a worker's answer to L{Reclaim} (one that does not
#: answer gives back nothing).
RECLAIM_TIMEOUT = 2.0


class Rows(amp.Argument):
    """
    An AMP argument holding a list of rows, tuples of strings and integers (of the
    types given, one per column), sent as UTF-8 lines of tab-separated fields. A batch
    of small records then costs a split per row, where an C{amp.AmpList} costs a box
    per row (measured, an L{Acquire} row made, sent and parsed: 3 microseconds, against
    35 to 50 as an C{AmpList}).
    Strings must hold no tab or line break (service names and addresses do not).
    """

    def __init__(self, columns: tuple[type, ...], optional: bool = False):
        super().__init__(optional)
        self.columns = columns

    def toString(self, rows) -> bytes:
        text = "\n".join(["\t".join(map(str, row)) for row in rows])
        if text.count("\t") != len(rows) * (len(self.columns) - 1) \
                or text.count("\n") != max(0, len(rows) - 1):
            raise ValueError(f"a field of {rows!r} holds a tab or a line break")
        return text.encode()

    def fromString(self, data: bytes) -> list[tuple]:
        if not data:
            return []
        columns = self.columns
        rows = []
        for line in data.decode().split("\n"):
            fields = line.split("\t")
            if len(fields) != len(columns):
                raise ValueError(f"a row of {len(fields)} fields, not {len(columns)}")
            rows.append(tuple([kind(field) for kind, field in zip(columns, fields)]))
        return rows


class Acquire(amp.Command):
    """
    Worker to main: slots for the connections its leases cannot admit (those of one
    reactor turn, in one command). A row per connection: service, source ("" for
    none), slots (0 or 1: one of the service's, for C{max_connections}), source slots
    (0 or 1: one of the source's, for C{max_per_source}), C{max_connections},
    C{max_per_source} (0 for none).

    An answer per row, in order: slots, source slots (at least what was asked, or
    nothing), how many idle slots of each kind the worker may keep, and the refusal
    reason ("" when granted).
    """

    arguments = [(b"requests", Rows((str, str, int, int, int, int)))]
    response = [(b"answers", Rows((int, int, int, int, str)))]


class Return(amp.Command):
    """
    Worker to main: slots given back, C{slots} of the service's and, per source,
    rows of (source, slots).
    """

    arguments = [(b"service", amp.Unicode()), (b"slots", amp.Integer()),
                 (b"sources", Rows((str, int)))]
    requiresAnswer = False


class Reclaim(amp.Command):
    """
    Main to worker: give back the idle slots of C{service} (C{source} "") or of one of
    its sources, and from now on each one as it is freed. The answer is how many.
    """

    arguments = [(b"service", amp.Unicode()), (b"source", amp.Unicode())]
    response = [(b"slots", amp.Integer())]


def grantSize(free: int, workers: int) -> tuple[int, int]:
    """
    The slots to grant when C{free} (at least 1) are left, among C{workers}, and how
    many idle ones the worker may keep: C{min(free // (2 * workers), CHUNK)}, at least
    1 of each (the broker asks for idle slots back when it runs short).
    """
    chunk = max(1, min(free // (2 * max(1, workers)), CHUNK))
    return chunk, chunk


# -- the main process -------------------------------------------------------------------------


class _Slots:
    """
    The slots of one limit (a service's C{max_connections}, or one source's
    C{max_per_source}) granted to each worker.

    @ivar contended: every worker holding some was asked to give back idle ones as soon
        as they are (L{Reclaim}), and grants let keep none; cleared by a grant that
        finds plenty free (twice the workers).
    @ivar round: while a L{Reclaim} round is out, the L{Deferred}s of those waiting for
        it to end.
    """

    __slots__ = ("held", "total", "contended", "round")

    def __init__(self):
        self.held: dict[tuple, int] = {}
        self.total = 0
        self.contended = False
        self.round: list[Deferred] | None = None

    def add(self, worker: tuple, count: int) -> None:
        self.held[worker] = self.held.get(worker, 0) + count
        self.total += count

    def remove(self, worker: tuple, count: int) -> None:
        """
        C{worker} gave back C{count} (never more than it holds).
        """
        held = self.held.get(worker, 0)
        count = min(count, held)
        if held - count:
            self.held[worker] = held - count
        else:
            self.held.pop(worker, None)
        self.total -= count

    def drop(self, worker: tuple) -> None:
        self.total -= self.held.pop(worker, 0)


class _Pool:
    """
    One service's slots: C{connections}, its C{max_connections}; C{sources}, its
    C{max_per_source} by source (only while some are granted).
    """

    __slots__ = ("connections", "sources")

    def __init__(self):
        self.connections = _Slots()
        self.sources: dict[str, _Slots] = {}

    def slots(self, key: str | None) -> _Slots:
        if key is None:
            return self.connections
        slots = self.sources.get(key)
        if slots is None:
            slots = self.sources[key] = _Slots()
        return slots

    def tidy(self, key: str | None) -> None:
        """
        Forget C{key}'s slots when none is granted and no round is out.
        """
        if key is not None:
            slots = self.sources.get(key)
            if slots is not None and not slots.total and slots.round is None:
                del self.sources[key]


class Broker:
    """
    The main process's side of the global limits: the slots of every service granted to
    each worker, a part of L{portserver.supervisor.Supervisor} (C{addPart}).

    A worker is known by C{(index, pid)}: during a reload two generations have workers
    of the same index.

    @param clock: the L{IReactorTime} of the wait for L{Reclaim} answers.
    """

    def __init__(self, clock):
        self.clock = clock
        self.workers: dict[tuple, object] = {}  # (index, pid) -> its MainChannel
        self.pools: dict[str, _Pool] = {}

    # -- the supervisor's part interface ----------------------------------------------------

    def locator(self, index: int, pid: int, channel) -> amp.CommandLocator:
        """
        The responders for worker C{index} (process C{pid}), whose channel is
        C{channel}: L{Acquire} and L{Return}.
        """
        self.workers[(index, pid)] = channel
        return BrokerLocator(self, (index, pid))

    def workerStarted(self, index: int, pid: int, channel) -> None:
        self.workers[(index, pid)] = channel

    def workerLost(self, index: int, pid: int, reason: str) -> None:
        """
        Worker C{index} (process C{pid}) exited or its channel closed: every slot it
        held returns to the pool.
        """
        worker = (index, pid)
        self.workers.pop(worker, None)
        for pool in self.pools.values():
            pool.connections.drop(worker)
            for key, slots in list(pool.sources.items()):
                slots.drop(worker)
                pool.tidy(key)

    # -- what workers ask -------------------------------------------------------------------

    def granted(self, service: str, source: str | None = None) -> int:
        """
        The slots of C{service} (or of its C{source}) granted and not given back.
        """
        pool = self.pools.get(service)
        if pool is None:
            return 0
        slots = pool.connections if source is None else pool.sources.get(source)
        return 0 if slots is None else slots.total

    def acquire(self, worker: tuple, service: str, source: str, slots: int,
                sourceSlots: int, maxConnections: int, maxPerSource: int):
        """
        Answer one row of an L{Acquire} of C{worker}: an answer row, or a L{Deferred}
        of one when other workers are asked to give back idle slots first.
        """
        wanted = []
        if slots:
            wanted.append((None, maxConnections, MAX_CONNECTIONS))
        if sourceSlots:
            wanted.append((source, maxPerSource, MAX_PER_SOURCE))
        pool = self.pools.get(service)
        if pool is None:
            pool = self.pools[service] = _Pool()
        return self._decide(worker, service, pool, wanted, True)

    def giveBack(self, worker: tuple, service: str, slots: int, sources) -> None:
        """
        C{worker} gave back C{slots} of C{service}'s and, per source, those in
        C{sources} (rows of source and slots).
        """
        pool = self.pools.get(service)
        if pool is None:
            return
        if slots:
            pool.connections.remove(worker, slots)
        for key, count in sources:
            held = pool.sources.get(key)
            if held is not None:
                held.remove(worker, count)
                pool.tidy(key)

    def _decide(self, worker, service, pool, wanted, reclaim: bool):
        short = [(key, reason) for key, limit, reason in wanted
                 if pool.slots(key).total >= limit]
        if not short:
            return self._grant(worker, pool, wanted)
        if reclaim:
            rounds = [self._reclaim(worker, service, pool, key) for key, _ in short]
            rounds = [d for d in rounds if d is not None]
            if rounds:
                done = DeferredList(rounds)
                done.addCallback(lambda _: self._decide(worker, service, pool, wanted, False))
                return done
        for key, _, _ in wanted:
            pool.tidy(key)
        return (0, 0, 0, 0, short[0][1])

    def _grant(self, worker, pool, wanted) -> tuple:
        answer = [0, 0, 0, 0, ""]
        live = worker in self.workers  # (a late answer to a lost worker grants nothing)
        workers = len(self.workers)
        for key, limit, _ in wanted:
            slots = pool.slots(key)
            free = limit - slots.total
            count, keep = grantSize(free, workers)
            if free >= 2 * workers:
                slots.contended = False
            elif slots.contended:
                keep = 0
            if live:
                slots.add(worker, count)
            column = 0 if key is None else 1
            answer[column], answer[column + 2] = count, keep
        return tuple(answer)

    def _reclaim(self, worker, service, pool, key) -> Deferred | None:
        """
        Ask every other worker holding slots of C{key} for its idle ones, unless they
        were asked already (contended); a L{Deferred} that fires when they have
        answered, or L{None} when there is no one to ask.
        """
        slots = pool.slots(key)
        if slots.round is not None:
            waiting = Deferred()
            slots.round.append(waiting)
            return waiting
        if slots.contended:
            return None
        slots.contended = True
        holders = [w for w in slots.held if w != worker and w in self.workers]
        if not holders:
            return None
        slots.round = []

        def answered(result, holder):
            slots.remove(holder, result["slots"])

        asked = []
        for holder in holders:
            d = self.workers[holder].callRemote(Reclaim, service=service,
                                                source=key or "")
            d.addTimeout(RECLAIM_TIMEOUT, self.clock)
            d.addCallback(answered, holder)
            d.addErrback(lambda failure: None)  # lost (workerLost frees its slots), or late
            asked.append(d)

        def over(_):
            waiting, slots.round = slots.round, None
            for d in waiting:
                d.callback(None)

        done = DeferredList(asked)
        done.addCallback(over)
        mine = Deferred()
        if slots.round is not None:
            slots.round.append(mine)
        else:
            mine.callback(None)  # every answer came at once
        return mine


class BrokerLocator(amp.CommandLocator):
    """
    The L{Broker}'s responders on one worker's channel.
    """

    def __init__(self, broker: Broker, worker: tuple):
        self.broker = broker
        self.worker = worker

    @Acquire.responder
    def acquire(self, requests):
        broker, worker = self.broker, self.worker
        answers = [broker.acquire(worker, *request) for request in requests]
        if any(isinstance(answer, Deferred) for answer in answers):
            return gatherResults([answer if isinstance(answer, Deferred) else succeed(answer)
                                  for answer in answers]).addCallback(
                lambda answers: {"answers": answers})
        return {"answers": answers}

    @Return.responder
    def giveBack(self, service, slots, sources):
        self.broker.giveBack(self.worker, service, slots, sources)
        return {}


# -- a worker ---------------------------------------------------------------------------------


class _Lease:
    """
    The slots of one limit a worker holds: C{held} granted, C{used} by connections (or
    set aside for one waiting), C{asked} in requests out, C{keep} idle ones it may hold.
    """

    __slots__ = ("held", "used", "asked", "keep")

    def __init__(self):
        self.held = self.used = self.asked = self.keep = 0


class _Request:
    """
    One L{Acquire} out, for a L{Pending} connection: what it set aside (slots free
    here) and what it asked for.
    """

    __slots__ = ("leases", "pending", "key", "aside", "sourceAside", "want", "sourceWant")

    def __init__(self, leases: "ServiceLeases", pending: Pending, key, aside: bool,
                 sourceAside: bool, want: bool, sourceWant: bool):
        self.leases = leases
        self.pending = pending
        self.key = key
        self.aside, self.sourceAside = aside, sourceAside
        self.want, self.sourceWant = want, sourceWant

    def withdraw(self) -> None:
        """
        The connection gave up: free what was set aside; what the answer grants stays
        idle (and goes back).
        """
        self.pending = None
        self._putBack()
        leases = self.leases
        leases.check(None, leases.connections)
        if self.key is not None:
            leases.check(self.key, leases.sources[self.key])

    def _putBack(self) -> None:
        leases = self.leases
        if self.aside:
            leases.connections.used -= 1
        if self.sourceAside:
            leases.sources[self.key].used -= 1
        self.aside = self.sourceAside = False

    def answered(self, answer: tuple) -> None:
        """
        The broker's answer (an L{Acquire} answer row).
        """
        leases = self.leases
        connections = leases.connections
        source = leases.sources[self.key] if self.key is not None else None
        if self.want:
            connections.asked -= 1
        if source is not None:
            source.asked -= 1
        slots, sourceSlots, keep, sourceKeep, refused = answer
        if not refused:
            if self.want:
                connections.held += slots
                connections.keep = keep
            if self.sourceWant:
                source.held += sourceSlots
                source.keep = sourceKeep
        else:  # the broker is short: keep none idle (see Broker._reclaim)
            if self.want:
                connections.keep = 0
            if self.sourceWant:
                source.keep = 0
        pending, self.pending = self.pending, None
        if pending is not None:
            if refused:
                self._putBack()
            else:
                if self.want:
                    connections.used += 1
                if self.sourceWant:
                    source.used += 1
        leases.check(None, connections)
        if source is not None:
            leases.check(self.key, source)
        if pending is not None:
            pending.decide(refused or None)

    def failed(self) -> None:
        """
        The main process could not be asked (logged by the caller): refused for the
        limit it waited on.
        """
        self.answered((0, 0, 0, 0, self.pending.reason if self.pending is not None
                       else MAX_CONNECTIONS))


class ServiceLeases:
    """
    The slots of one service's limits a worker holds: C{connections} for
    C{max_connections}, C{sources} for C{max_per_source} (by source, only while held,
    used or asked for). Its L{Admission} takes them (L{take}, L{request}) and frees them
    (L{release}).
    """

    def __init__(self, holder: "Leases", service: str):
        self.holder = holder
        self.service = service
        self.connections = _Lease()
        self.sources: dict[str, _Lease] = {}
        self.now: set = set()  # keys (None: the service's) with slots to give back now
        self.later: set = set()  # ... within RETURN_DELAY

    def take(self, key: str | None, maxConnections: int | None,
             maxPerSource: int | None) -> bool:
        """
        Take a free slot of each limit set (of the service's, and of C{key}'s, the
        connection's source) for a new connection, if there is one of each.
        """
        connections = self.connections
        if maxConnections is not None and connections.held <= connections.used:
            return False
        if maxPerSource is not None:
            source = self.sources.get(key)
            if source is None or source.held <= source.used:
                return False
            source.used += 1
        if maxConnections is not None:
            connections.used += 1
        return True

    def request(self, pending: Pending, key: str | None, maxConnections: int | None,
                maxPerSource: int | None) -> None:
        """
        Ask the main process for what L{take} found no free slot of, setting aside
        those it did find, and decide C{pending} by the answer.
        """
        connections = self.connections
        aside = want = sourceAside = sourceWant = False
        if maxConnections is not None:
            if connections.held > connections.used:
                connections.used += 1
                aside = True
            else:
                want = True
                connections.asked += 1
        if maxPerSource is not None:
            source = self.sources.get(key)
            if source is None:
                source = self.sources[key] = _Lease()
            source.asked += 1
            if source.held > source.used:
                source.used += 1
                sourceAside = True
            else:
                sourceWant = True
        pending.reason = MAX_CONNECTIONS if want else MAX_PER_SOURCE
        request = _Request(self, pending, key, aside, sourceAside, want, sourceWant)
        pending.withdraw = request.withdraw
        self.holder.ask(request, (self.service, key or "", int(want), int(sourceWant),
                                  maxConnections or 0, maxPerSource or 0))

    def release(self, key: str | None) -> None:
        """
        A connection admitted with leased slots ended: free its slot of the service's
        (if it took one) and of C{key}'s.
        """
        connections = self.connections
        used = connections.used
        if used:
            connections.used = used = used - 1
            if connections.held - used > connections.keep:
                self.check(None, connections)
        if key is not None:
            source = self.sources.get(key)
            if source is not None and source.used:
                source.used = used = source.used - 1
                if not used or source.held - used > source.keep:
                    self.check(key, source)

    def returnable(self, key: str | None, lease: _Lease) -> int:
        """
        How many of C{lease}'s slots to give back: the idle ones past C{keep}, or all
        of a source's once it has no connection here.
        """
        idle = lease.held - lease.used
        if idle <= 0:
            return 0
        if key is not None and not lease.used:
            return idle
        return max(0, idle - lease.keep)

    def check(self, key: str | None, lease: _Lease) -> None:
        """
        C{lease} (C{key}'s) changed: have what it can give back given back (now when it
        keeps none, else within L{RETURN_DELAY}), and forget a source's empty lease.
        """
        if self.returnable(key, lease):
            if lease.keep:
                self.later.add(key)
                self.holder.due(False)
            else:
                self.now.add(key)
                self.holder.due(True)
        elif key is not None and not (lease.held or lease.used or lease.asked):
            del self.sources[key]

    def reclaim(self, source: str) -> int:
        """
        The main process is short: give back the idle slots of the service's
        (C{source} "") or of C{source}'s, and each one as it is freed from now on.
        """
        key = source or None
        lease = self.connections if key is None else self.sources.get(key)
        if lease is None:
            return 0
        lease.keep = 0
        idle = max(0, lease.held - lease.used)
        lease.held -= idle
        self.check(key, lease)
        return idle

    def flush(self, keys: set) -> None:
        """
        Give back what the leases of C{keys} can (one L{Return}, or a few for many
        sources).
        """
        slots, sources = 0, []
        for key in keys:
            lease = self.connections if key is None else self.sources.get(key)
            if lease is None:
                continue
            count = self.returnable(key, lease)
            if count:
                lease.held -= count
                if key is None:
                    slots = count
                else:
                    sources.append((key, count))
            if key is not None and not (lease.held or lease.used or lease.asked):
                del self.sources[key]
        keys.clear()
        channel = self.holder.channel
        while slots or sources:
            batch, sources = sources[:RETURN_BATCH], sources[RETURN_BATCH:]
            channel.callRemote(Return, service=self.service, slots=slots, sources=batch)
            slots = 0


class Leases:
    """
    A worker's side of the global limits: the leases of each of its services
    (L{ServiceLeases}), asked of and given back to the main process over C{channel}
    (the worker's AMP channel).

    @param clock: the L{IReactorTime} of the delayed returns.
    """

    def __init__(self, channel, clock):
        self.channel = channel
        self.clock = clock
        self.services: dict[str, ServiceLeases] = {}
        self.errors = RepeatedErrors(log, clock)
        self._asking: list[tuple[_Request, tuple]] = []  # requests to send, this turn
        self._soon = None  # the call sending them, and returning slots kept by none
        self._later = None  # ... the others, after RETURN_DELAY

    def forService(self, service: str) -> ServiceLeases:
        """
        C{service}'s leases (made on first use).
        """
        leases = self.services.get(service)
        if leases is None:
            leases = self.services[service] = ServiceLeases(self, service)
        return leases

    def attach(self, server) -> None:
        """
        Have every admission of C{server} (a L{portserver.server.PortServer}: its
        C{admissions} by service) admit with these leases.
        """
        for service, admission in server.admissions.items():
            if admission.leases is None:
                admission.useLeases(self.forService(service))

    def locator(self) -> amp.CommandLocator:
        """
        The responders for the main process's commands (L{Reclaim}).
        """
        return LeasesLocator(self)

    def ask(self, request: _Request, row: tuple) -> None:
        """
        Send C{request} (the L{Acquire} row C{row}) at the end of this reactor turn,
        with the others of the turn.
        """
        self._asking.append((request, row))
        self.due(True)

    def _send(self) -> None:
        asking, self._asking = self._asking, []
        while asking:
            batch, asking = asking[:ACQUIRE_BATCH], asking[ACQUIRE_BATCH:]
            d = self.channel.callRemote(Acquire, requests=[row for _, row in batch])
            d.addCallbacks(self._answered, self._failed, callbackArgs=(batch,),
                           errbackArgs=(batch,))

    def _answered(self, result: dict, batch: list) -> None:
        for (request, _), answer in zip(batch, result["answers"]):
            request.answered(answer)

    def _failed(self, failure, batch: list) -> None:
        self.errors.failure("acquire", "Could not ask the main process for connection "
                            "slots; refusing {count} connection(s)", failure,
                            count=len(batch))
        for request, _ in batch:
            request.failed()

    def due(self, now: bool) -> None:
        """
        Some slots are to be given back: at the end of this reactor turn (C{now}), or
        within L{RETURN_DELAY}.
        """
        if now:
            if self._soon is None:
                self._soon = self.clock.callLater(0, self._flush, True)
        elif self._later is None:
            self._later = self.clock.callLater(RETURN_DELAY, self._flush, False)

    def _flush(self, now: bool) -> None:
        if now:
            self._soon = None
        else:
            self._later = None
        for leases in self.services.values():
            if leases.now:
                leases.flush(leases.now)
            if not now and leases.later:
                leases.flush(leases.later)
        if self._asking:  # (after the returns: the broker has those first)
            self._send()

    def stop(self) -> None:
        """
        Cancel the calls pending (the worker stops).
        """
        for call in (self._soon, self._later):
            if call is not None and call.active():
                call.cancel()
        self._soon = self._later = None


class LeasesLocator(amp.CommandLocator):
    """
    The L{Leases}' responders on the worker's channel.
    """

    def __init__(self, leases: Leases):
        self.leases = leases

    @Reclaim.responder
    def reclaim(self, service, source):
        leases = self.leases.services.get(service)
        return {"slots": 0 if leases is None else leases.reclaim(source)}


def workerPart(server, channel, index: int) -> Leases:
    """
    The global limits in a worker (an entry of C{portserver.worker.PARTS}): leases over
    C{channel} for every admission of C{server}; its C{locator()} answers the main
    process's L{Reclaim}.
    """
    leases = Leases(channel, server.reactor)
    leases.attach(server)
    return leases


def brokerPart(supervisor) -> Broker:
    """
    The global limits in the main process (an entry of
    C{portserver.supervisor.MAIN_PARTS}): a L{Broker} on C{supervisor}'s reactor.
    """
    return Broker(supervisor.reactor)

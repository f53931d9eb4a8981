"""
The status page in a real browser: headless Chromium (Debian's C{/usr/bin/chromium})
driven by Playwright, against a real C{twistd portserver} process and real TCP
connections made from chosen source ports.

Each test starts the server as a subprocess (this checkout's code, as in
L{tests.test_twistd}) and a browser of its own, and drives them from a
L{SynchronousTestCase} with Playwright's synchronous API: no reactor runs in this
process meanwhile. The page is served under the strict Content-Security-Policy the status
service sends (added here too, so these tests hold whatever the server sends), and any
script error or CSP violation fails the test. Waits are conditions polled in the page
with a deadline (L{DEADLINE}), never fixed sleeps; the test that needs time to stand still
uses Playwright's fake clock. The module takes about 60 s (3 to 6 s a test).

L{LayoutTests} check the layout at 375, 1280 and 1920 pixels wide (no sideways scrolling,
no clipped table, no empty or lone half-width panel; see L{LAYOUT_PROBLEMS}) over the
bundled config moved by C{--port-offset}, and save a screenshot of each width in the
test's temporary directory (C{_trial_temp/tests.test_browser.LayoutTests.*/}).

Every port is chosen free, never fixed: the status service listens on port 0, the bundled
config gets a free offset, a privileged port (as root) is drawn at random from 500-899
(not the bundled config's 7-37, not the 900-999 of L{tests.test_twistd}); if another
process takes a port first, the server is started again on other ports. So these tests
run alongside others under C{trial -j}.

Skipped when Chromium or Playwright is missing (see L{SKIP}).

Run as a script, it writes the README's screenshot instead (see L{readmeScreenshot}):

    python -m tests.test_browser --readme-screenshot [PATH]
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule, portClass
from portserver.tap import bundledConfigPath
from tests.support import freePort
from tests.test_twistd import twistd, waitForLine

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'")
DEADLINE = 10  # seconds for the page to show a change: it polls once a second
STARTUP = 30  # seconds for twistd or Chromium to start on a loaded machine
TRIES = 5  # starts of twistd, on other ports each time, when a port was taken meanwhile
README_SCREENSHOT = os.path.join(ROOT, "examples", "status-page.png")

# Page errors and console messages that mean the page is broken (a failed fetch is not:
# the page expects those and says so).
BROKEN = re.compile(r"Content Security Policy|CSP violation|Uncaught", re.IGNORECASE)

# Runs in the page before its own script: reports CSP violations on the console.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
});
"""


def skipReason() -> str | None:
    """
    Why the browser tests cannot run here, or L{None} when they can.
    """
    if sync_playwright is None:
        return ("the playwright package is missing: `pip install playwright` (it is in the "
                "test extra: `pip install '.[test]'`); do not run `playwright install`, "
                "these tests use Debian's Chromium")
    if not os.path.exists(CHROMIUM):
        return (f"{CHROMIUM} is missing: `apt-get install chromium` (Debian; .ci/run "
                "installs it)")
    return None


SKIP = skipReason()


def isFree(port: int, transports=("tcp",)) -> bool:
    """
    Whether C{port} can be bound on 127.0.0.1 for each of C{transports} now.
    """
    for transport in transports:
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def privilegedPort(preferred: int | None = None,
                   rule: PrivilegeRule | None = None) -> int | None:
    """
    A privileged port free on 127.0.0.1 for TCP (C{preferred} if it is) when this
    process may bind it (root), else L{None}. Others are drawn at random from 500-899
    (or what the host rule leaves of it): not the bundled config's ports nor the 900-999
    that L{tests.test_twistd} tries, so tests run in parallel rarely want the same one.
    """
    rule = rule or PrivilegeRule.fromHost()
    if os.getuid() != 0 or rule.unprivilegedStart <= 1:
        return None
    high = min(rule.unprivilegedStart, 900)
    candidates = random.sample(range(max(1, high - 400), high), min(high - 1, 400))
    if preferred is not None and rule.isPrivileged(preferred):
        candidates = [preferred, *candidates]
    return next((port for port in candidates if isFree(port)), None)


def serverConfig(echo: int, discard: int, privileged: int | None) -> str:
    """
    echo (TCP and UDP) and discard on unprivileged ports, daytime on C{privileged} if
    given, all on 127.0.0.1; the status service on any free port; a short drain.
    """
    text = ("status:\n  listen: tcp:0:interface=127.0.0.1\n"
            "registry:\n  connection_log: off\n"
            "shutdown:\n  drain: 1\n"
            "services:\n"
            f"  - {{name: echo, protocol: echo, port: {echo}, interface: 127.0.0.1, "
            "transports: [tcp, udp]}\n"
            f"  - {{name: discard, protocol: discard, port: {discard}, "
            "interface: 127.0.0.1}\n")
    if privileged is not None:
        text += (f"  - {{name: daytime, protocol: daytime, port: {privileged}, "
                 "interface: 127.0.0.1}\n")
    return text


def bundledConfig() -> str:
    """
    The bundled config's text, with its status service on a free port (port 0) and no
    connection log.
    """
    with open(bundledConfigPath(), encoding="utf-8") as f:
        text = f.read()
    for old, new in (('listen: "tcp:8790:interface=127.0.0.1"',
                      'listen: "tcp:0:interface=127.0.0.1"'),
                     ("connection_log: connections.log", "connection_log: off")):
        assert text.count(old) == 1, f"the bundled config has changed: no {old!r}"
        text = text.replace(old, new)
    return text


def freeOffset(ports: set[tuple[str, int]]) -> int:
    """
    A C{--port-offset} that moves each of C{ports} (transport, port) to one free on
    127.0.0.1 now, drawn at random from 20000-39999.
    """
    for _ in range(100):
        offset = random.randrange(20000, 40000)
        if all(isFree(port + offset, (transport,)) for transport, port in ports):
            return offset
    raise AssertionError("no --port-offset with every port free in 100 tries")


class Server:
    """
    A C{twistd -n portserver} process with L{serverConfig}, run in C{directory}: C{url}
    is its status page, C{echo}, C{discard} and C{privileged} its ports (C{privileged}
    L{None} when there is no daytime listener: not root). The ports are free ones,
    or those given when they are free.
    """

    def __init__(self, directory: str, echo: int | None = None, discard: int | None = None,
                 privileged: int | None = None):
        def configure():
            self.echo = echo if echo and isFree(echo, ("tcp", "udp")) else freePort()
            self.discard = discard if discard and isFree(discard) else freePort()
            while self.discard == self.echo:
                self.discard = freePort()
            self.privileged = privilegedPort(privileged)
            return serverConfig(self.echo, self.discard, self.privileged), []
        self.start(directory, configure)

    def start(self, directory: str, configure) -> None:
        """
        Start twistd in C{directory} with what C{configure()} gives, (config text, more
        arguments); when a port was taken by another process since it was chosen free,
        again (L{TRIES} times at most), with what C{configure} gives then.
        """
        for attempt in range(1, TRIES + 1):
            text, arguments = configure()
            with open(os.path.join(directory, "portserver.yaml"), "w") as f:
                f.write(text)
            self.process = twistd("portserver", "--config", "portserver.yaml", *arguments,
                                  cwd=directory)
            try:
                lines = waitForLine(self.process, "portserver ready", STARTUP)
            except AssertionError as e:
                self.stop()
                if attempt < TRIES and "Address already in use" in str(e):
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            break
        [self.url] = [m.group(1) for line in lines
                      for m in [re.search(r"Status service listening on (\S+)", line)] if m]

    def stop(self) -> None:
        """
        SIGTERM, and wait for the exit (SIGKILL if it does not come).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STARTUP)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class BundledServer(Server):
    """
    A C{twistd -n portserver --port-offset N} process over the bundled config (see
    L{bundledConfig}), as the README tells an ordinary user to run it: twelve listeners
    whose addresses say "(from 7)", none privileged. C{offset} is N, a free one.
    """

    def __init__(self, directory: str):
        text = bundledConfig()
        plan = loadPlan(bundledConfigPath(), discover().providers, text=text)
        ports = {(listener.transport, listener.port) for listener in plan.listeners}

        def configure():
            self.offset = freeOffset(ports)
            return text, ["--port-offset", str(self.offset)]
        self.privileged = None
        self.start(directory, configure)

    def port(self, configured: int) -> int:
        """
        Where the bundled config's port C{configured} is served.
        """
        return configured + self.offset


def connectFrom(port: int, transport: str = "tcp") -> tuple[socket.socket, int]:
    """
    A socket bound to a source port chosen here on 127.0.0.1, connected to C{port} on
    127.0.0.1 (for UDP, one datagram sent there): the socket and its source port.
    """
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    for _ in range(20):
        source = freePort(transport)
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", source))
        except OSError as e:  # taken since freePort looked: choose again
            s.close()
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        s.settimeout(DEADLINE)
        if transport == "tcp":
            s.connect(("127.0.0.1", port))
        else:
            s.sendto(b"ping", ("127.0.0.1", port))
        return s, source
    raise AssertionError("no free source port in 20 tries")


class Browser:
    """
    Playwright with one headless Chromium; L{open} gives pages of the status site with
    the strict CSP, recording what breaks them in C{errors}.
    """

    def __init__(self):
        self.playwright = sync_playwright().start()
        try:
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=STARTUP * 1000)
        except BaseException:
            self.playwright.stop()
            raise
        self.errors: list[str] = []

    def open(self, url: str, width: int = 1280, height: int = 800, fakeClock: bool = False,
             before=None):
        """
        A new page (in a context of its own) at C{url}; C{before(page)} runs first.
        """
        context = self.browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(DEADLINE * 1000)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", lambda message: BROKEN.search(message.text)
                and self.errors.append(f"console: {message.text}"))
        page.add_init_script(REPORT_VIOLATIONS)
        # A URL, not a predicate: then only the page's own request waits for this
        # process (a predicate would hold every request until Python looks at it).
        page.route(url.split("#")[0], self._withCSP)
        if fakeClock:
            page.clock.install()
        if before is not None:
            before(page)
        page.goto(url, timeout=STARTUP * 1000)
        return page

    @staticmethod
    def _withCSP(route):
        """
        Answer with the server's response, under L{CSP} as well as any policy of the
        server's (policies joined by a comma are all enforced).
        """
        response = route.fetch()
        headers = dict(response.headers)
        given = headers.get("content-security-policy")
        headers["content-security-policy"] = f"{given}, {CSP}" if given else CSP
        route.fulfill(response=response, headers=headers)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self.playwright.stop()


# JavaScript run in the page by the tests.
CONNECTION_ROWS = """(transport) => [...document.querySelectorAll(
    `#connections tbody tr[data-transport="${transport}"]`)]
  .filter((row) => row.getClientRects().length > 0)
  .map((row) => `${row.dataset.local} ${row.dataset.remote}`).sort()"""
ROWS_ARE = f"""([transport, expected]) =>
  JSON.stringify(({CONNECTION_ROWS})(transport)) === JSON.stringify(expected)"""
STATE_IS = """(state) =>
  document.getElementById("connection-state").dataset.state === state"""

# What is wrong with the layout, as sentences (none: it is right). Sideways: the page is no
# wider than the window, and no box (a section, a panel, a table's scrolling box, a table)
# has content wider than itself: nothing clipped, nothing to scroll. Panels: a listener
# group with no listener is not left at part of the width, nor is one alone on its row;
# on a narrow window (40rem = 640 px and less) every panel is the width of the column.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const shown = (e) => e.getClientRects().length > 0;
  const box = (e) => e.getBoundingClientRect();
  const name = (e) => {
    const heading = e.closest("section, figure")
      ?.querySelector("h2, h3, figcaption")?.textContent.trim().replace(/\\s+/g, " ");
    return `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}` +
      `${e.classList.length ? "." + [...e.classList].join(".") : ""}` +
      (heading ? ` (under "${heading}")` : "");
  };
  const page = document.documentElement;
  if (page.scrollWidth > innerWidth) {
    problems.push(`the page is ${page.scrollWidth}px wide in a ${innerWidth}px window`);
  }
  const boxes = "header, main, main section, footer, .totals, .group, .chart, .filters, " +
    ".scroll, table";
  for (const e of document.querySelectorAll(boxes)) {
    if (shown(e) && e.scrollWidth > e.clientWidth) {
      problems.push(`${name(e)} overflows: ${e.scrollWidth}px of content in ` +
                    `${e.clientWidth}px`);
    }
  }
  for (const table of document.querySelectorAll("table")) {
    const outer = table.parentElement;
    if (shown(table) && box(table).right > box(outer).right + 0.5) {
      problems.push(`${name(table)} is cut: ${Math.round(box(table).width)}px wide in ` +
                    `${outer.clientWidth}px`);
    }
  }
  for (const panel of document.querySelectorAll(".group, .chart")) {
    if (!shown(panel)) continue;
    const width = box(panel).width, row = box(panel.parentElement).width;
    if (width >= row - 1) continue;
    const empty = panel.matches(".group") &&
      panel.querySelectorAll("tbody tr[data-service]").length === 0;
    const beside = [...panel.parentElement.children].some((other) => other !== panel &&
      shown(other) && Math.abs(box(other).top - box(panel).top) < 1);
    const why = empty ? "is empty" : !beside ? "is alone on its row"
      : innerWidth <= 640 ? "is not one column" : null;
    if (why) {
      problems.push(`${name(panel)} ${why} at ${Math.round(width)}px of the ` +
                    `${Math.round(row)}px row`);
    }
  }
  return problems;
}"""


# The window sizes the layout is checked at: a phone, a laptop, a desktop.
WINDOWS = ((375, 740), (1280, 900), (1920, 1080))


class BrowserTestCase(SynchronousTestCase):
    """
    A server (made by L{makeServer}) and a browser for each test, and the helpers of the
    tests that look at the page.
    """

    if SKIP:
        skip = SKIP

    makeServer = Server

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.server = self.makeServer(self.directory)
        self.addCleanup(self.server.stop)
        self.browser = Browser()
        self.addCleanup(self.browser.close)
        self.addCleanup(self.assertPageWorked)

    def assertPageWorked(self):
        """
        No script error or CSP violation happened on any page (checked after each test).
        """
        self.assertEqual(self.browser.errors, [])

    def open(self, path: str = "", **kwargs):
        page = self.browser.open(self.server.url + path, **kwargs)
        self.waitFor(page, STATE_IS, "live", "the page showing live data")
        return page

    def waitFor(self, page, condition: str, argument, what: str):
        """
        Wait until the JavaScript function C{condition(argument)} is true in C{page},
        for L{DEADLINE} seconds at most; fail saying C{what} did not happen, and what
        the page showed.
        """
        try:
            page.wait_for_function(condition, arg=argument, polling=100,
                                   timeout=DEADLINE * 1000)
        except PlaywrightTimeout:
            self.fail(f"{what}: not within {DEADLINE}s; the page shows state "
                      f"{page.text_content('#connection-state')!r}, TCP rows "
                      f"{page.evaluate(CONNECTION_ROWS, 'tcp')}, UDP rows "
                      f"{page.evaluate(CONNECTION_ROWS, 'udp')}")

    def waitForRows(self, page, transport: str, expected: set[tuple[int, int]], what: str):
        """
        Wait until the visible live connection rows of C{transport} are exactly
        C{expected}, given as (local port, remote port) pairs on 127.0.0.1.
        """
        rows = sorted(f"127.0.0.1:{local} 127.0.0.1:{remote}" for local, remote in expected)
        self.waitFor(page, ROWS_ARE, [transport, rows], what)

    def connect(self, port: int, transport: str = "tcp") -> tuple[socket.socket, int]:
        client, source = connectFrom(port, transport)
        self.addCleanup(client.close)
        return client, source

    def assertLayout(self, page, ready: str) -> str:
        """
        Once the JavaScript condition C{ready} holds in C{page}, save a screenshot of the
        whole page in the test's directory, as C{layout-WIDTH.png}, and fail if
        L{LAYOUT_PROBLEMS} finds any, naming them and the screenshot. Return its path.
        """
        self.waitFor(page, ready, None, "the page drawn with the test's data")
        width = page.viewport_size["width"]
        screenshot = os.path.join(self.directory, f"layout-{width}.png")
        page.screenshot(path=screenshot, full_page=True)
        problems = page.evaluate(LAYOUT_PROBLEMS)
        if problems:
            self.fail(f"at {width}px wide: " + "; ".join(problems) + f" (see {screenshot})")
        return screenshot


class StatusPageTests(BrowserTestCase):
    """
    The status page as a person sees it, kept up to date from a real server.
    """

    def test_connectionsAppearAndGo(self):
        """
        Two TCP connections made from chosen source ports appear in the live table as
        exactly those endpoint pairs, with their bytes; each disappears once closed and
        is then listed as recently closed, closed by the client. A screenshot is written.
        """
        page = self.open()
        echo = self.server.echo
        first, firstPort = self.connect(echo)
        second, secondPort = self.connect(echo)
        for client in (first, second):
            client.sendall(b"hello")
            self.assertEqual(client.recv(100), b"hello")
        self.waitForRows(page, "tcp", {(echo, firstPort), (echo, secondPort)},
                         "both connections listed")
        self.waitFor(page, """(remote) => {
            const row = document.querySelector(`#connections tr[data-remote="${remote}"]`);
            const cells = [...row.children].map((cell) => cell.textContent);
            return cells[0] === "echo" && cells[5] === "5" && cells[6] === "5";
        }""", f"127.0.0.1:{firstPort}", "the first connection's 5 bytes each way")
        screenshot = os.path.join(self.directory, "status-page.png")
        page.screenshot(path=screenshot, full_page=True)
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

        first.close()
        self.waitForRows(page, "tcp", {(echo, secondPort)}, "the first one gone")
        self.waitFor(page, """(remote) => document.querySelector(
            `#closed tr[data-remote="${remote}"][data-reason="client-closed"]`) !== null""",
                     f"127.0.0.1:{firstPort}", "the first one listed as closed")
        second.close()
        self.waitForRows(page, "tcp", set(), "the second one gone")
        self.assertEqual(page.text_content("#connections tbody").strip(),
                         "No live connections.")

    def test_filters(self):
        """
        The service filter shows one service's connections and flows; the address
        search shows those whose local or remote endpoint contains the text (Enter in
        it submits nothing).
        """
        page = self.open()
        echo, discard = self.server.echo, self.server.discard
        _, echoPort = self.connect(echo)
        _, discardPort = self.connect(discard)
        _, flowPort = self.connect(echo, "udp")
        self.waitForRows(page, "tcp", {(echo, echoPort), (discard, discardPort)},
                         "both connections listed")
        self.waitForRows(page, "udp", {(echo, flowPort)}, "the flow listed")

        page.select_option("#service-filter", "discard")
        self.waitForRows(page, "tcp", {(discard, discardPort)}, "only discard's")
        self.waitForRows(page, "udp", set(), "no flow of discard")
        page.select_option("#service-filter", "")
        page.fill("#address-filter", f":{echoPort}")
        page.press("#address-filter", "Enter")  # submits nothing: the page stays
        self.waitForRows(page, "tcp", {(echo, echoPort)}, "only the one from that port")
        self.waitForRows(page, "udp", set(), "no flow from that port")
        self.assertEqual(page.url, self.server.url)
        page.fill("#address-filter", "")
        self.waitForRows(page, "tcp", {(echo, echoPort), (discard, discardPort)},
                         "both again")

    def test_listenersByPrivilegeAndClass(self):
        """
        Every unprivileged listener is in the unprivileged section, in the table part
        of its port class, with its live connection count; the privileged section has
        exactly the privileged listener (when the test runs as root; else it says it
        has none).
        """
        page = self.open()
        echo, discard = self.server.echo, self.server.discard
        self.connect(echo)
        self.waitFor(page, """(address) => document.querySelector(
            `[data-group="unprivileged"] tr[data-address="${address}"][data-transport="tcp"]
             td[data-live="1"]`) !== null""", f"127.0.0.1:{echo}", "echo's live count")
        listed = page.evaluate("""() => [...document.querySelectorAll(
            "section[data-group] tbody tr[data-service]")].map((row) => [
              row.closest("section").dataset.group, row.closest("tbody").dataset.class,
              row.dataset.service, row.dataset.transport, row.dataset.address,
              row.dataset.class])""")
        expected = [["unprivileged", portClass(port), service, transport,
                     f"127.0.0.1:{port}", portClass(port)]
                    for service, transport, port in (("echo", "tcp", echo),
                                                     ("echo", "udp", echo),
                                                     ("discard", "tcp", discard))]
        if self.server.privileged is not None:
            expected.append(["privileged", "well-known", "daytime", "tcp",
                             f"127.0.0.1:{self.server.privileged}", "well-known"])
        key = lambda row: (row[0], row[2], row[3])  # noqa: E731
        self.assertEqual(sorted(listed, key=key), sorted(expected, key=key))
        emptyShown = page.is_visible('[data-group="privileged"] .empty')
        self.assertEqual(emptyShown, self.server.privileged is None)

    def test_privilegedListener(self):
        """
        As root, a listener on a privileged port is shown in the privileged section,
        under well-known ports, and not in the unprivileged one.
        """
        if self.server.privileged is None:
            raise SkipTest("binding a privileged port needs root (and a host rule with "
                           "privileged ports): the privileged group is checked only as "
                           "root, as CI runs")
        page = self.open()
        address = f"127.0.0.1:{self.server.privileged}"
        self.waitFor(page, """(address) => document.querySelector(
            `[data-group="privileged"] tbody[data-class="well-known"]
             tr[data-service="daytime"][data-address="${address}"]`) !== null""",
                     address, "daytime in the privileged section")
        self.assertFalse(page.is_visible(
            f'[data-group="unprivileged"] tr[data-address="{address}"]'))

    def test_chart(self):
        """
        After a few seconds, the charts have a line of more than one point per service
        and series, a legend naming each service, and a text alternative with the
        live connection now.
        """
        page = self.open()
        self.connect(self.server.echo)
        self.waitFor(page, """() => {
            const lines = [...document.querySelectorAll("svg polyline")];
            const points = (service, series) => lines.filter((l) =>
              l.dataset.service === service && l.dataset.series === series)
              .map((l) => l.getAttribute("points").trim().split(/\\s+/).length)[0] || 0;
            return ["echo", "discard"].every((service) =>
              points(service, "live") > 1 && points(service, "accepts") > 1);
        }""", None, "lines of more than one point in both charts")
        self.waitFor(page, """() => document.getElementById("live-chart-desc").textContent
            .includes("echo: 1 live now")""", None, "the text alternative")
        legend = page.eval_on_selector_all("#legend li", "items => items.map(i => "
                                           "i.dataset.service)")
        expected = ["discard", "echo"] + (["daytime"] if self.server.privileged else [])
        self.assertEqual(sorted(legend), sorted(expected))
        self.assertEqual(page.get_attribute("#live-chart", "role"), "img")

    def test_disconnected(self):
        """
        When the server stops, the page says it is disconnected and retrying, in a live
        status region.
        """
        page = self.open()
        self.server.stop()
        self.waitFor(page, STATE_IS, "disconnected", "the disconnected state")
        state = page.locator("#connection-state")
        self.assertEqual((state.get_attribute("role"), state.text_content()),
                         ("status", "Disconnected — retrying"))
        self.assertTrue(state.is_visible())

    def test_pause(self):
        """
        The pause button stops the polling (on a fake clock, five seconds bring no
        request) and says so; pressed again, the page polls at once.
        """
        requests = []
        page = self.open(fakeClock=True, before=lambda page: page.on(
            "request", lambda r: "/api/" in r.url and requests.append(r.url)))
        page.click("#pause")
        self.waitFor(page, STATE_IS, "paused", "the paused state")
        self.assertEqual(page.get_attribute("#pause", "aria-pressed"), "true")
        asked = len(requests)
        page.clock.run_for(5000)
        self.assertEqual(len(requests), asked)
        page.click("#pause")
        self.waitFor(page, STATE_IS, "live", "live again")
        self.assertEqual(page.get_attribute("#pause", "aria-pressed"), "false")
        self.assertGreater(len(requests), asked)

    def test_token(self):
        """
        A token in the URL fragment is taken out of the visible URL, kept in
        sessionStorage and sent as C{Authorization: Bearer} on every API request, also
        after a reload without the fragment. A 401 shows how to give a token.
        """
        sent = []
        page = self.open("#token=s3cret", before=lambda page: page.on(
            "request", lambda r: "/api/" in r.url
            and sent.append(r.headers.get("authorization"))))
        self.assertEqual(page.url, self.server.url)
        self.assertEqual(page.evaluate(
            "() => sessionStorage.getItem('portserver-status-token')"), "s3cret")
        page.reload()
        self.waitFor(page, STATE_IS, "live", "live after the reload")
        self.assertTrue(sent)
        self.assertEqual(set(sent), {"Bearer s3cret"})

        page.route("**/api/**", lambda route: route.fulfill(
            status=401, content_type="application/json", body='{"error": "token"}'))
        self.waitFor(page, STATE_IS, "unauthorized", "the needs-a-token state")
        self.assertIn("This status service needs a token: open the page as /#token=",
                      " ".join(page.text_content("#auth-needed").split()))
        self.assertTrue(page.is_visible("#auth-needed"))

    def test_layout(self):
        """
        At 375, 1280 and 1920 pixels wide the page has no sideways scrolling, clipped
        table or empty or lone half-width panel (L{LAYOUT_PROBLEMS}); as root, with a
        listener in both groups, the two groups share a row at 1280 and 1920 pixels and
        are one column at 375. Screenshots are saved (L{assertLayout}).
        """
        self.connect(self.server.echo)
        ready = """() => document.querySelector('#connections tr[data-id]') &&
                         document.querySelector('[data-group="unprivileged"] td[data-live]')"""
        for width, height in WINDOWS:
            page = self.open(width=width, height=height)
            self.assertLayout(page, ready)
            if self.server.privileged is not None:
                tops = page.evaluate("""() => [...document.querySelectorAll(".group")]
                    .map((group) => group.getBoundingClientRect().top)""")
                self.assertEqual(tops[0] == tops[1], width > 640, (width, tops))
            page.context.close()

    def test_keyboard(self):
        """
        The controls are reached with the Tab key, in page order, and show a visible
        focus outline.
        """
        page = self.open()
        reached = []
        for _ in range(40):
            page.keyboard.press("Tab")
            focused = page.evaluate("""() => {
                const e = document.activeElement;
                const style = getComputedStyle(e);
                return [e.id, style.outlineStyle !== "none" && style.outlineWidth !== "0px"];
            }""")
            if focused[0] in ("pause", "service-filter", "address-filter"):
                reached.append(focused[0])
                self.assertTrue(focused[1], f"{focused[0]} shows no focus outline")
            if focused[0] == "address-filter":
                break
        self.assertEqual(reached, ["pause", "service-filter", "address-filter"])


class LayoutTests(BrowserTestCase):
    """
    The layout over the bundled config moved by C{--port-offset} (L{BundledServer}): no
    privileged listener, and twelve unprivileged ones with long addresses ("(from 7)"),
    some live connections and some closed. Each test saves its screenshot as
    C{layout-WIDTH.png} in its temporary directory.
    """

    makeServer = BundledServer

    # The page shows every listener, the live connections and a closed one.
    READY = """() =>
      document.querySelectorAll('[data-group="unprivileged"] tr[data-service]').length === 12
      && document.querySelectorAll("#connections tr[data-id]").length === 3
      && document.querySelector("#closed tr[data-id]") !== null"""

    def assertLayoutAt(self, width: int, height: int) -> None:
        """
        With three live connections (two TCP, one UDP) and a closed one, the page at
        C{width} x C{height} has none of L{LAYOUT_PROBLEMS}.
        """
        echo = self.server.port(7)
        for _ in range(2):
            client, _ = self.connect(echo)
            client.sendall(b"hello, portserver\n" * 20)
        self.connect(echo, "udp")
        self.connect(self.server.port(9))[0].close()
        page = self.open(width=width, height=height)
        self.assertLayout(page, self.READY)
        self.assertTrue(page.is_visible('[data-group="privileged"] .empty'))

    def test_phone(self):
        """
        At 375 x 740, nothing is wider than the window and every panel takes the width:
        each table row is a card, no table scrolls sideways.
        """
        self.assertLayoutAt(375, 740)

    def test_laptop(self):
        """
        At 1280 x 900, the empty privileged group is not a half-width box, and the
        unprivileged table fits whole (its Refused column is not cut).
        """
        self.assertLayoutAt(1280, 900)

    def test_desktop(self):
        """
        At 1920 x 1080, the same.
        """
        self.assertLayoutAt(1920, 1080)


def readmeScreenshot(path: str = README_SCREENSHOT, seconds: float = 20) -> None:
    """
    Write the README's screenshot: the page at 1280x800 over a server with a few live
    connections and some traffic over C{seconds}.
    """
    if SKIP:
        raise SystemExit(SKIP)
    directory = tempfile.mkdtemp(prefix="portserver-screenshot-")
    server = Server(directory, echo=10007, discard=10009, privileged=13)
    browser = Browser()
    clients = []
    try:
        page = browser.open(server.url)
        clients += [connectFrom(server.echo)[0] for _ in range(3)]
        clients += [connectFrom(server.discard)[0] for _ in range(2)]
        clients.append(connectFrom(server.echo, "udp")[0])
        for client in clients[:5]:
            client.sendall(b"hello, portserver\n" * 20)
        for step in range(int(seconds * 2)):  # some accepts, and closes, to draw
            for _ in range(1 + step % 4):
                connectFrom(server.echo)[0].close()
            if step % 6 == 0:
                clients.append(connectFrom(server.discard if step % 12 else server.echo)[0])
            page.wait_for_timeout(500)  # lets Playwright answer the page meanwhile
        page.wait_for_function("() => document.querySelectorAll('svg polyline').length > 0")
        page.screenshot(path=path)
        print(f"wrote {path}")
    finally:
        for client in clients:
            client.close()
        browser.close()
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--readme-screenshot"]:
        raise SystemExit("usage: python -m tests.test_browser --readme-screenshot [PATH]")
    readmeScreenshot(*sys.argv[2:3])

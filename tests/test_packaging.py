"""
Tests of portserver as a distribution: the wheel built from the checkout, and that wheel
installed into a virtualenv and run with C{twistd} from elsewhere.

SLOW: every test here is slow. The module builds one wheel (a few seconds) and creates
one virtualenv (a few more), each once for the whole module, then runs C{twistd} in
subprocesses: about 15 s in all. Subprocesses run with deadlines (L{DEADLINE}).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase

#: The checkout this module is in.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds any one subprocess may take (generous: a build may fetch build requirements).
DEADLINE = 120

#: The built-in protocols, in the order C{--list-protocols} gives them (by port).
BUILTINS = ["echo", "discard", "daytime", "qotd", "chargen", "smtp", "time", "http",
            "exec", "forward"]

#: Run C{twistd} as its console script does: its C{console_scripts} entry point, run by
#: the given interpreter. (Twisted is found in the running interpreter's site directories,
#: so its C{twistd} script is not in the test virtualenv's C{bin/}; this is that script's
#: code.)
TWISTD = ("import sys; from importlib.metadata import entry_points; "
          "[ep] = entry_points(group='console_scripts', name='twistd'); "
          "sys.argv[0] = 'twistd'; sys.exit(ep.load()())")

_cache: dict[str, object] = {}


def _scratch() -> str:
    """
    One temporary directory for the module's builds, removed when the process exits.
    """
    if "scratch" not in _cache:
        path = os.path.realpath(tempfile.mkdtemp(prefix="portserver-packaging-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _cache["scratch"] = path
    return _cache["scratch"]


def cleanEnv() -> dict[str, str]:
    """
    The environment for subprocesses: nothing that would point Python at the checkout
    or at another environment.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "PYTHONSAFEPATH")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    """
    Run C{args} in C{cwd} with L{cleanEnv}, text output captured, within L{DEADLINE}.
    """
    return subprocess.run(args, cwd=cwd, env=cleanEnv(), capture_output=True, text=True,
                          timeout=DEADLINE)


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"{result.args!r} exited {result.returncode}\n--- stdout:\n{result.stdout}"
            f"\n--- stderr:\n{result.stderr}")


def _canBuildWithoutIsolation() -> bool:
    """
    Whether this interpreter can build a wheel with C{--no-build-isolation}: setuptools
    before 70.1 needs the C{wheel} package for C{bdist_wheel}.
    """
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) >= (70, 1)


def builtWheel() -> str:
    """
    Build the wheel (once per process) from a copy of the checkout, so no C{build/} or
    C{*.egg-info} lands in the checkout.

    @return: the wheel's path.
    """
    if "wheel" in _cache:
        return _cache["wheel"]
    scratch = _scratch()
    source = os.path.join(scratch, "source")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "_trial_temp*", "__pycache__", ".venv"))
    out = os.path.join(scratch, "wheelhouse")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, source]
    if _canBuildWithoutIsolation():
        command[4:4] = ["--no-build-isolation"]
    result = run(command, cwd=scratch)
    if result.returncode != 0:
        raise AssertionError(describe(result))
    [name] = [n for n in os.listdir(out) if n.endswith(".whl")]
    _cache["wheel"] = os.path.join(out, name)
    return _cache["wheel"]


def outerSiteDirectories() -> list[str]:
    """
    The directories this interpreter finds its third-party packages in (Twisted and the
    other requirements): its site directories, and the one Twisted was imported from if
    it is elsewhere. Wherever the suite runs (a system Python, a virtualenv, CI's fresh
    virtualenv), these are the directories that hold portserver's requirements.
    """
    import site

    import twisted

    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    directories.append(os.path.dirname(os.path.dirname(os.path.abspath(twisted.__file__))))
    unique = []
    for d in directories:
        d = os.path.realpath(d)
        if os.path.isdir(d) and d != ROOT and d not in unique:
            unique.append(d)
    return unique


def installedVenv() -> str:
    """
    A fresh virtualenv (made once per process) with the wheel installed in its own
    site-packages, from no index, and this interpreter's site directories added after
    its own (a C{.pth} file calling C{site.addsitedir}), for the requirements.

    Not C{--system-site-packages}: from inside a virtualenv, that option exposes the
    I{base} interpreter's site-packages, which need not have Twisted at all. The wheel
    is installed before the C{.pth} is written, so pip sees only the empty virtualenv.

    @return: the virtualenv's directory.
    """
    if "venv" in _cache:
        return _cache["venv"]
    wheel = builtWheel()
    venv = os.path.join(_scratch(), "venv")
    python = os.path.join(venv, "bin", "python")
    result = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=_scratch())
    if result.returncode != 0:
        raise AssertionError(describe(result))
    result = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                 cwd=_scratch())
    if result.returncode != 0:
        raise AssertionError(describe(result))
    sitePackages = result.stdout.strip()
    result = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                  "--no-compile", "--target", sitePackages, wheel], cwd=_scratch())
    if result.returncode != 0:
        raise AssertionError(describe(result))
    with open(os.path.join(sitePackages, "zz-outer-site.pth"), "w") as f:
        for directory in outerSiteDirectories():
            f.write(f"import site; site.addsitedir({directory!r})\n")
    _cache["venv"] = venv
    return venv


class WheelContentsTests(SynchronousTestCase):
    """
    SLOW (builds the wheel once for the module): what the wheel ships.
    """

    def setUp(self):
        with zipfile.ZipFile(builtWheel()) as wheel:
            self.names = set(wheel.namelist())
            self.read = {n: wheel.read(n) for n in self.names}

    def test_pluginDropinsShipped(self):
        """
        The wheel ships both drop-ins: the C{twistd portserver} plugin and the built-in
        protocols.
        """
        self.assertIn("twisted/plugins/portserver_plugin.py", self.names)
        self.assertIn("twisted/plugins/portserver_protocols.py", self.names)

    def test_noTwistedPackageFiles(self):
        """
        The wheel puts nothing in Twisted's own package but the two drop-ins: no
        C{twisted/__init__.py} or C{twisted/plugins/__init__.py}, which would replace
        Twisted's when installed, and no C{dropin.cache}.
        """
        self.assertNotIn("twisted/__init__.py", self.names)
        self.assertNotIn("twisted/plugins/__init__.py", self.names)
        self.assertEqual(
            sorted(n for n in self.names if n.startswith("twisted/")),
            ["twisted/plugins/portserver_plugin.py", "twisted/plugins/portserver_protocols.py"])

    def test_bundledConfigShipped(self):
        """
        The checkout's C{etc/portserver.yaml} ships inside the package, as
        C{portserver/etc/portserver.yaml}, unchanged.
        """
        self.assertIn("portserver/etc/portserver.yaml", self.names)
        with open(os.path.join(ROOT, "etc", "portserver.yaml"), "rb") as f:
            self.assertEqual(self.read["portserver/etc/portserver.yaml"], f.read())

    def test_packagesShipped(self):
        """
        The wheel ships every module of the C{portserver} package and its subpackages
        found in the checkout.
        """
        expected = set()
        for directory, dirs, files in os.walk(os.path.join(ROOT, "portserver")):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    expected.add(os.path.relpath(os.path.join(directory, f), ROOT)
                                 .replace(os.sep, "/"))
        self.assertIn("portserver/protocols/classic.py", expected)
        self.assertLessEqual(expected, self.names)


class InstalledTests(SynchronousTestCase):
    """
    SLOW (builds the wheel and a virtualenv once for the module, then runs subprocesses):
    the wheel installed in a virtualenv, used from a directory that is not the checkout.

    The virtualenv also sees the running interpreter's site directories (for Twisted and
    the other requirements), where a portserver may be installed too; these tests check
    that the virtualenv's copy is the one used.
    """

    def setUp(self):
        self.venv = installedVenv()
        self.python = os.path.join(self.venv, "bin", "python")
        # A directory outside the checkout (trial's own temporary directories are in it).
        self.cwd = tempfile.mkdtemp(dir=_scratch(), prefix="cwd-")
        self.assertFalse(self.cwd.startswith(ROOT + os.sep))
        result = run([self.python, "-c",
                      "import sysconfig; print(sysconfig.get_path('purelib'))"], self.cwd)
        self.assertEqual(result.returncode, 0, describe(result))
        self.sitePackages = os.path.realpath(result.stdout.strip())
        self.assertTrue(self.sitePackages.startswith(self.venv + os.sep), self.sitePackages)

    def twistd(self, *args: str) -> subprocess.CompletedProcess:
        """
        Run the virtualenv's C{twistd} with C{args}, from a directory that is not the
        checkout.
        """
        return run([self.python, "-c", TWISTD, *args], self.cwd)

    def test_importsFromVirtualenv(self):
        """
        The virtualenv's Python imports portserver from the virtualenv, not from the
        running interpreter's site directories nor the checkout.
        """
        result = run([self.python, "-c",
                      "import portserver.tap; print(portserver.__file__); "
                      "print(portserver.tap.__file__)"], self.cwd)
        self.assertEqual(result.returncode, 0, describe(result))
        package, tap = (os.path.realpath(line) for line in result.stdout.split())
        self.assertEqual(package, os.path.join(self.sitePackages, "portserver", "__init__.py"))
        self.assertEqual(tap, os.path.join(self.sitePackages, "portserver", "tap.py"))

    def test_dropinsInstalledOnPluginPath(self):
        """
        The drop-ins are installed into the virtualenv's C{twisted/plugins/} with no
        C{__init__.py} beside them, and that directory is on C{twisted.plugins.__path__}.
        """
        plugins = os.path.join(self.sitePackages, "twisted", "plugins")
        for name in ("portserver_plugin.py", "portserver_protocols.py"):
            self.assertTrue(os.path.isfile(os.path.join(plugins, name)), name)
        self.assertFalse(os.path.exists(os.path.join(plugins, "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(self.sitePackages, "twisted",
                                                     "__init__.py")))
        result = run([self.python, "-c",
                      "import twisted.plugins; print('\\n'.join(twisted.plugins.__path__))"],
                     self.cwd)
        self.assertEqual(result.returncode, 0, describe(result))
        self.assertIn(plugins, [os.path.realpath(p) for p in result.stdout.splitlines()])

    def test_twistdHelpListsPortserver(self):
        """
        C{twistd --help} lists the C{portserver} subcommand.
        """
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0, describe(result))
        commands = [line.split()[0] for line in result.stdout.splitlines()
                    if line.startswith("    ") and line.split()]
        self.assertIn("portserver", commands, describe(result))

    def test_listProtocols(self):
        """
        C{twistd portserver --list-protocols} lists the built-ins, in port order, and
        exits 0.
        """
        result = self.twistd("portserver", "--list-protocols")
        self.assertEqual(result.returncode, 0, describe(result))
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split()[:3], ["NAME", "PORT", "TRANSPORTS"])
        # Plugins installed beside portserver (CI installs examples/rot13) are listed too.
        self.assertEqual([line.split()[0] for line in lines[1:]
                          if line.split()[0] in BUILTINS], BUILTINS)

    def test_checkUsesBundledConfig(self):
        """
        C{twistd portserver --check}, with no C{--config}, checks the bundled config
        installed in the virtualenv's site-packages, finds it valid and exits 0.
        """
        result = self.twistd("portserver", "--check")
        self.assertEqual(result.returncode, 0, describe(result))
        bundled = os.path.join(self.sitePackages, "portserver", "etc", "portserver.yaml")
        self.assertIn(f"portserver: {bundled}: configuration is valid", result.stdout)
        self.assertIn(f"12 listener(s) for 6 service(s) in {bundled}", result.stdout)
        self.assertNotIn(ROOT + os.sep, result.stdout)

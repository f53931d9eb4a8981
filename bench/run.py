"""
Run the side-by-side benchmark and write results.{md,json,png}.

    python bench/run.py            # the full run: 5 rounds of 2 s (about 12 minutes),
                                   # written to bench/results/ (the published results)
    python bench/run.py --quick    # 2 rounds of 0.5 s (under 2 minutes), written to
                                   # bench/results/quick/: never over the full run's

Installs nothing itself unless asked: --install-system adds xinetd and ucspi-tcp with
apt-get when missing (as root). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

RESULTS = os.path.join(harness.BENCH, "results")  # the full run's, published
QUICK_RESULTS = os.path.join(RESULTS, "quick")  # a quick run's: a sketch, not published


def installSystemPackages(report=print) -> None:
    missing = [package for command, package in (("xinetd", "xinetd"), ("tcpserver", "ucspi-tcp"))
               if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        report(f"cannot install {', '.join(missing)}: needs root and apt-get")
        return
    report(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   env=env, check=False, stdout=subprocess.DEVNULL)


def csv(choices):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)} "
                                             f"(choose from {', '.join(choices)})")
        return values
    return parse


def makeParser():
    parser = argparse.ArgumentParser(description="portserver side-by-side benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 0.5 s measurements (under two minutes)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per measurement")
    parser.add_argument("--connections", type=int, help="idle connections to hold (10000)")
    parser.add_argument("--targets", type=csv(harness.TARGET_NAMES),
                        default=list(harness.TARGET_NAMES),
                        help=f"comma-separated, from {','.join(harness.TARGET_NAMES)}")
    parser.add_argument("--scenarios", type=csv(harness.ALL_SCENARIOS),
                        default=list(harness.ALL_SCENARIOS),
                        help=f"comma-separated, from {','.join(harness.ALL_SCENARIOS)}")
    parser.add_argument("--services", type=csv(["1", "10", "50"]) , default=["1", "10", "50"],
                        help="service counts for the services scenario")
    parser.add_argument("--out", help=f"the directory for the results [default: {RESULTS}; "
                                      f"with --quick, {QUICK_RESULTS}]")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib)")
    parser.add_argument("--install-system", action="store_true",
                        help="apt-get install xinetd and ucspi-tcp when missing")
    return parser


def outputDirectory(args) -> str:
    """
    Where the results go: C{--out} if given; else a quick run's go to L{QUICK_RESULTS},
    so that they never replace the full run's in L{RESULTS}.
    """
    if args.out:
        return args.out
    return QUICK_RESULTS if args.quick else RESULTS


def settingsFrom(args) -> harness.Settings:
    quick = args.quick
    return harness.Settings(
        rounds=args.rounds or (2 if quick else 5),
        duration=args.duration if args.duration is not None else (0.5 if quick else 2.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if quick else 0.5),
        connections=args.connections or 10000,
        targets=args.targets, scenarios=args.scenarios,
        serviceCounts=tuple(int(c) for c in args.services))


def main(argv=None) -> int:
    args = makeParser().parse_args(argv)
    if args.install_system:
        installSystemPackages()
    settings = settingsFrom(args)
    out = outputDirectory(args)
    started = time.monotonic()
    try:
        result = harness.run(settings, out, drawChart=not args.no_chart)
    except harness.TargetError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print()
    print(result["markdown"])
    print(f"wrote {out}/results.md, results.json"
          + ("" if args.no_chart else ", results.png")
          + f" in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

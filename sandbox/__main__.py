"""``python -m sandbox``: run every simulated system until Ctrl-C (or SIGINT, SIGTERM).

Prints the URLs only; the credentials (and the TLS client files) go to
``--env-file`` (mode 600) when given -- ``source`` it in another shell.

Example:
    $ python -m sandbox --seed 37 --port-population 8001 --port-tthc 8002 --api-key secret --env-file var/sandbox.env
    population WSDL: http://127.0.0.1:8001/?wsdl
    TTHC REST:       http://127.0.0.1:8002/api/v1/dossiers (X-API-Key required)
    civil_status     http://127.0.0.1:40211/?wsdl
    land             http://127.0.0.1:40212
    ...
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import threading
from pathlib import Path

from sandbox.data import DATASET_KEYS
from sandbox.server import SYSTEMS, start_sandbox


def _size(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or name not in DATASET_KEYS or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected DATASET=COUNT with DATASET in {sorted(DATASET_KEYS)}")
    return name, int(count)


def _capacity(text: str) -> tuple[str, float]:
    name, sep, per_s = text.partition("=")
    try:
        value = float(per_s)
    except ValueError:
        value = -1.0
    if not sep or name not in SYSTEMS or value <= 0:
        raise argparse.ArgumentTypeError(f"expected SYSTEM=PER_S (a number above 0) with SYSTEM in {list(SYSTEMS)}")
    return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=37)
    parser.add_argument("--citizens", type=int, default=2000)
    parser.add_argument("--dossiers", type=int, default=6000)
    parser.add_argument("--size", type=_size, action="append", default=[], metavar="DATASET=COUNT",
                        help="rows of another dataset, e.g. land_parcel=50 (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-population", type=int, default=0)
    parser.add_argument("--port-tthc", type=int, default=0)
    parser.add_argument("--port-base", type=int, default=0,
                        help="give the systems consecutive ports from here, in the order " + ", ".join(SYSTEMS))
    parser.add_argument("--api-key", default=None, help="TTHC X-API-Key (default: no check)")
    parser.add_argument("--defect-rate", type=float, default=0.01)
    parser.add_argument("--error-rate", type=float, default=0.0, help="injected 503 probability")
    parser.add_argument("--transient-rate", type=float, default=0.0,
                        help="injected 503 + reset + timeout probability (a third each)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each data request")
    parser.add_argument("--capacity", action="append", default=[], metavar="SYSTEM=PER_S", type=_capacity,
                        help="requests a second a system answers before it says 503 'server busy', as the "
                             "population database does at peak hours, e.g. population=5 (repeatable)")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="write every LGSP_* variable (with credentials) here, mode 600")
    return parser


def _write_env_file(path: Path, env: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))
    os.chmod(path, 0o600)


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop the sandbox, even when it was started with SIGINT ignored.

    A background job of a non-interactive shell (`cmd &`, `nohup`) starts with SIGINT
    ignored, and Python then leaves it ignored: `kill -INT` did nothing (a test hung on it).
    """
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the sandbox, block until interrupted (Ctrl-C, SIGINT or SIGTERM)."""
    args = _parser().parse_args(argv)
    _stop_on_signals()
    ports = {name: args.port_base + i for i, name in enumerate(SYSTEMS)} if args.port_base else {}
    handle = start_sandbox(args.seed, args.citizens, args.dossiers, args.host, args.port_population,
                           args.port_tthc, args.api_key, args.defect_rate, sizes=dict(args.size), ports=ports)
    if args.transient_rate:
        handle.faults.transient(args.transient_rate)
    if args.error_rate:
        handle.faults.error_rate = args.error_rate
    handle.faults.latency_s = args.latency
    for system, per_s in args.capacity:
        handle.faults[system].capacity_per_s = per_s
    key_note = " (X-API-Key required)" if args.api_key else ""
    print(f"population WSDL: {handle.population_wsdl}")
    print(f"TTHC REST:       {handle.tthc_url}/api/v1/dossiers{key_note}")
    for name in SYSTEMS[2:]:
        print(f"{name:<16} {handle.urls[name]}")
    if args.env_file is not None:
        _write_env_file(args.env_file, handle.env())
        print(f"environment (with credentials): source {args.env_file}")
    counts = ", ".join(f"{len(handle.data.records(name))} {name}" for name in DATASET_KEYS)
    print(f"{counts} (seed {args.seed}); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m sandbox``: run both simulators until Ctrl-C.

Example:
    $ python -m sandbox --seed 37 --port-population 8001 --port-tthc 8002 --api-key secret
    population WSDL: http://127.0.0.1:8001/?wsdl
    TTHC REST:       http://127.0.0.1:8002/api/v1/dossiers (X-API-Key required)
"""

from __future__ import annotations

import argparse
import threading

from sandbox.server import start_sandbox


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the sandbox, block until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=37)
    parser.add_argument("--citizens", type=int, default=2000)
    parser.add_argument("--dossiers", type=int, default=6000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-population", type=int, default=0)
    parser.add_argument("--port-tthc", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--defect-rate", type=float, default=0.01)
    parser.add_argument("--error-rate", type=float, default=0.0, help="injected 503 probability")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each data request")
    args = parser.parse_args(argv)

    handle = start_sandbox(args.seed, args.citizens, args.dossiers, args.host,
                           args.port_population, args.port_tthc, args.api_key, args.defect_rate)
    handle.faults.error_rate, handle.faults.latency_s = args.error_rate, args.latency
    key_note = " (X-API-Key required)" if args.api_key else ""
    print(f"population WSDL: {handle.population_wsdl}")
    print(f"TTHC REST:       {handle.tthc_url}/api/v1/dossiers{key_note}")
    print(f"{len(handle.data.citizens)} citizens, {len(handle.data.dossiers)} dossiers (seed {args.seed}); Ctrl-C to stop",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

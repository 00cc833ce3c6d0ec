"""A loopback REST source of N synthetic citizens, fast enough not to be what a benchmark measures.

Every contender of `benchmarks/full_sync.py` reads the same pages from it:

    GET /citizens?page_size=10000[&updated_since=ISO][&after=K]
    -> {"items": [{personal_id, full_name, birth_date, sex, commune_code,
                   address, phone, updated_at}, ...],
        "next": "http://host:port/citizens?...&after=K" | null}

Records are ordered by (updated_at, personal_id); `after` is the position of
the last record of the previous page (keyset paging); `updated_since` keeps
records changed strictly after it. Each record is rendered to JSON once (at
start-up, or when it changes) and a page is the join of its records' JSON (~1 ms
for 10,000); a full read's pages are joined at start-up and kept (until a change),
so any read, a full one or an incremental one, costs the server little more than
a socket write.
`POST /admin/change?fraction=0.01[&seed=1]` changes that share of the records (new
address, updated_at = now; the seed picks which), renders them again and says how
many it changed.

Every record is valid for the `citizen` dataset (CCCD check digits, a 2025
commune code of province 37), and keys are unique.

    .venv/bin/python benchmarks/citizen_source.py --rows 1000000 --port 8900
"""
from __future__ import annotations

import argparse
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô"]
MIDDLE = ["Văn", "Thị", "Hữu", "Minh", "Thu", "Đức"]
GIVEN = ["An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Hùng", "Lan", "Mai", "Nam", "Phương", "Quân", "Thảo"]
EPOCH = np.datetime64("2025-08-01T00:00:00", "s")
FIELDS = ("personal_id", "full_name", "birth_date", "sex", "commune_code", "address", "phone", "updated_at")
RECORD = "{" + ",".join(f'"{field}":"%s"' for field in FIELDS) + "}"


def _communes() -> np.ndarray:
    from quality.reference import province_communes
    return np.array(sorted(province_communes(37)))


class Citizens:
    """The source's records as columns (numpy), kept ordered by (updated_at, personal_id)."""

    def __init__(self, rows: int, seed: int = 37) -> None:
        rng = np.random.default_rng(seed)
        index = np.arange(rows, dtype=np.int64)
        year = 1940 + index % 80
        self.female = (index // 80) % 2 == 1
        century_sex = (year // 100 - 19) * 2 + self.female
        serial = index // 80 // 2
        if serial.max(initial=0) >= 1_000_000:
            raise SystemExit("at most 160,000,000 rows")
        self.personal_id = np.char.add(np.char.add(
            np.char.add("037", century_sex.astype(str)), np.char.zfill((year % 100).astype(str), 2)),
            np.char.zfill(serial.astype(str), 6))
        self.birth_date = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]") + rng.integers(0, 365, rows)
        names = np.array([f"{s} {m} {g}" for s in SURNAMES for m in MIDDLE for g in GIVEN])
        self.full_name = names[rng.integers(0, len(names), rows)]
        communes = _communes()
        self.commune_code = communes[rng.integers(0, len(communes), rows)]
        self.address = np.char.add("Thôn ", rng.integers(1, 30, rows).astype(str))
        self.phone = np.char.add("09", np.char.zfill(rng.integers(0, 10**8, rows).astype(str), 8))
        self.updated_at = EPOCH + rng.integers(0, 10**7, rows).astype("timedelta64[s]")
        self.lock = threading.Lock()
        self.json = np.empty(rows, dtype=object)  # each record as orjson renders it
        self._render(np.arange(rows))
        self._order()

    def _render(self, positions: np.ndarray) -> None:
        """Render the records at `positions` to JSON, exactly as `orjson.dumps` renders them as dicts.

        A template, not a dict per record (4x faster): no value holds a character JSON escapes.
        """
        for start in range(0, len(positions), 100_000):
            part = positions[start:start + 100_000]
            iso = np.char.add(np.datetime_as_string(self.updated_at[part], unit="s"), "Z")
            columns = (self.personal_id[part].tolist(), self.full_name[part].tolist(),
                       np.datetime_as_string(self.birth_date[part]).tolist(),
                       np.where(self.female[part], "female", "male").tolist(), self.commune_code[part].tolist(),
                       self.address[part].tolist(), self.phone[part].tolist(), iso.tolist())
            self.json[part] = [(RECORD % values).encode() for values in zip(*columns)]

    def _order(self) -> None:
        order = np.lexsort((self.personal_id, self.updated_at))
        for name in ("personal_id", "birth_date", "female", "full_name", "commune_code", "address", "phone",
                     "updated_at", "json"):
            setattr(self, name, getattr(self, name)[order])
        self.pages: dict[tuple[int, int], bytes] = {}  # a full read's answers, joined once

    def __len__(self) -> int:
        return len(self.personal_id)

    def change(self, fraction: float, seed: int = 1) -> int:
        """Give `fraction` of the records a new address and updated_at = now."""
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(self), size=int(len(self) * fraction), replace=False)
        now = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "s")
        # the changes of one call span ~len/1000 s; the next call's come after them, as a source's would
        # (a change dated before an earlier one's would fall behind a cursor already past it)
        with self.lock:
            now = max(now, self.updated_at.max() + np.timedelta64(1, "s"))
            self.address = self.address.astype("<U40")
            self.address[chosen] = np.char.add("Tổ dân phố ", rng.integers(1, 99, len(chosen)).astype(str))
            self.updated_at[chosen] = now + np.arange(len(chosen)).astype("timedelta64[ms]").astype("timedelta64[s]")
            self._render(np.sort(chosen))
            self._order()
        return len(chosen)

    def page(self, start: int, size: int) -> list[bytes]:
        """The JSON of the records from position `start` on, at most `size` of them."""
        return self.json[start:min(start + size, len(self))].tolist()  # type: ignore[no-any-return]

    @staticmethod
    def body(items: list[bytes], link: str | None) -> bytes:
        """A page's answer: what `orjson.dumps({"items": records, "next": link})` gives, from rendered records."""
        return b'{"items":[' + b",".join(items) + b'],"next":' + orjson.dumps(link) + b"}"

    def first_after(self, since: str | None) -> int:
        if not since:
            return 0
        moment = np.datetime64(since.replace("Z", "").split("+")[0], "s")
        return int(np.searchsorted(self.updated_at, moment, side="right"))


def _handler(citizens: Citizens, base_url: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if url.path != "/admin/change":
                return self._send(404, b'{"error": "not found"}')
            query = parse_qs(url.query)
            fraction, seed = float(query.get("fraction", ["0.01"])[0]), int(query.get("seed", ["1"])[0])
            self._send(200, orjson.dumps({"changed": citizens.change(fraction, seed)}))

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if url.path == "/health":
                return self._send(200, orjson.dumps({"rows": len(citizens)}))
            if url.path != "/citizens":
                return self._send(404, b'{"error": "not found"}')
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            size = min(int(query.get("page_size", 10000)), 50000)
            since = query.get("updated_since")
            with citizens.lock:
                start = int(query["after"]) if "after" in query else citizens.first_after(since)
                body = citizens.pages.get((start, size)) if not since else None
                if body is None:
                    items = citizens.page(start, size)
                    nxt = start + len(items)
                    link = None
                    if nxt < len(citizens) and items:
                        link = f"{base_url}/citizens?page_size={size}&after={nxt}"
                        if since:
                            link += f"&updated_since={since}"
                    body = citizens.body(items, link)
                    if not since:  # a full read's page is asked for again, by every contender
                        citizens.pages[(start, size)] = body
            self._send(200, body)

    return Handler


def serve(rows: int, port: int, page_size: int = 10000) -> None:
    citizens = Citizens(rows)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(citizens, f"http://127.0.0.1:{port}"))
    for start in range(0, rows, page_size):  # a full read's answers, joined before the run
        nxt = start + page_size
        link = f"http://127.0.0.1:{port}/citizens?page_size={page_size}&after={nxt}" if nxt < rows else None
        citizens.pages[(start, page_size)] = citizens.body(citizens.page(start, page_size), link)
    print(f"ready on {port}: {rows} citizens", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--page-size", type=int, default=10000)
    args = parser.parse_args()
    serve(args.rows, args.port, args.page_size)


if __name__ == "__main__":
    main()

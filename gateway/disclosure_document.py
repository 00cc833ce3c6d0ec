"""The disclosure report as a document to hand to the person who asked: `lgsp audit subject ID --document FILE`.

A person asks the province to whom their data was provided (Law 91/2025/QH15 on personal data protection);
the officer at the desk gives them an answer they can read. `gateway.disclosures` makes the report; this
renders it as one self-contained, printable HTML page (no script, no outside file: it can be printed,
saved as PDF, or sent), in Vietnamese by default or in English:

1. where the person's data is in the shared datasets now, and where it was (a commune they moved from);
2. what the platform holds of them and provides to no agency (a dataset not shared, rows its checks
   held back);
3. the reads that named them: when (Vietnam time), which agency, which dataset, how, with what result;
4. the reads that may have included their data: agency, dataset, how, how many times, when, on which
   condition (the agency's filters and the rows its grant covers);
5. why: each of those agencies' grant, with the purpose and legal basis it was approved on.

The person's ID is shown masked but for its last three digits; no other person's data is in it. Every
value from outside lgsp (an agency's name, a purpose an agency wrote) is escaped.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import sqlalchemy as sa

from catalog.models import Catalog
from gateway.policy import mask
from gateway.portal import TEMPLATES

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")

# each message as (Vietnamese, English), side by side
MESSAGES: dict[str, tuple[str, str]] = {
    "title": ("Thông báo về việc cung cấp dữ liệu cá nhân",
              "Notice of the provision of personal data"),
    "site": ("Nền tảng tích hợp, chia sẻ dữ liệu tỉnh Ninh Bình (LGSP)",
             "Ninh Binh province's data integration and sharing platform (LGSP)"),
    "lead": ("Theo yêu cầu của chủ thể dữ liệu có số định danh cá nhân {id}, về việc dữ liệu cá nhân của mình đã "
             "được cung cấp cho cơ quan, tổ chức nào qua Nền tảng (Luật Bảo vệ dữ liệu cá nhân số 91/2025/QH15).",
             "At the request of the data subject with personal ID {id}: to which agencies and organisations their "
             "personal data was provided through the platform (Law 91/2025/QH15 on personal data protection)."),
    "made": ("Lập lúc {when} (giờ Việt Nam) bởi {by}.",
             "Made at {when} (Vietnam time) by {by}."),
    "period_all": ("Khoảng thời gian: toàn bộ nhật ký truy cập của Nền tảng.",
                   "Period: the platform's whole access log."),
    "period_since": ("Khoảng thời gian: từ {since} (giờ Việt Nam) đến khi lập thông báo.",
                     "Period: from {since} (Vietnam time) to the making of this notice."),
    "held_heading": ("1. Dữ liệu của ông/bà trong các bộ dữ liệu dùng chung",
                     "1. Your data in the shared datasets"),
    "dataset": ("Bộ dữ liệu",
                "Dataset"),
    "now": ("Hiện nay",
            "Now"),
    "earlier": ("Trước đây",
                "Earlier"),
    "records_now": ("{n} bản ghi",
                    "{n} record(s)"),
    "none_now": ("không có",
                 "none"),
    "version": ("từ {since} đến {until}: {values}",
                "from {since} to {until}: {values}"),
    "the_beginning": ("khi bắt đầu lưu trữ",
                      "the beginning of the records kept"),
    "no_data": ("Không có dữ liệu của ông/bà trong các bộ dữ liệu dùng chung.",
                "None of your data is in the shared datasets."),
    "kept_heading": ("2. Dữ liệu của ông/bà Nền tảng lưu giữ, không cung cấp cho cơ quan, tổ chức nào",
                     "2. Your data the platform holds and provides to no agency"),
    "kept_intro": ("Các hệ thống nguồn gửi những dữ liệu này đến Nền tảng; Nền tảng lưu giữ nhưng không cung cấp cho "
                   "cơ quan, tổ chức nào. Lần cán bộ của tỉnh xem dữ liệu này (nếu có) được nêu ở mục 3.",
                   "The source systems sent this data to the platform, which holds it and provides it to no agency. "
                   "A province officer's look at it, if any, is in section 3."),
    "kept_records": ("Bản ghi",
                     "Records"),
    "named_as": ("Ông/bà có tên tại",
                 "Where you are named"),
    "quarantined": ("{n} bản ghi chưa đạt kiểm tra của Nền tảng, được giữ lại chờ hệ thống nguồn sửa",
                    "{n} record(s) that failed the platform's checks, held back until the source corrects them"),
    "named_heading": ("3. Các lần tra cứu đích danh ông/bà",
                      "3. Reads that named you"),
    "named_intro": ("Cơ quan hỏi đúng số định danh của ông/bà (tra cứu, lọc theo số định danh).",
                    "An agency asked for your personal ID itself (a lookup, a filter on the ID)."),
    "when": ("Thời điểm",
             "When"),
    "agency": ("Cơ quan, đơn vị",
               "Agency"),
    "how": ("Hình thức",
            "How"),
    "result": ("Kết quả",
               "Result"),
    "none": ("Không có lần nào.",
             "None."),
    "may_heading": ("4. Các lần cơ quan có thể đã nhận dữ liệu của ông/bà",
                    "4. Reads that may have included your data"),
    "may_intro": ("Cơ quan đọc nhiều bản ghi cùng lúc (danh sách, tải xuống, đồng bộ bản sao) với điều kiện mà dữ "
                  "liệu của ông/bà thỏa mãn vào thời điểm đọc. Nhật ký không lưu từng bản ghi đã gửi, nên đây là "
                  "những lần có thể đã bao gồm dữ liệu của ông/bà.",
                  "An agency read many records at once (a list, a download, a kept copy) on a condition your data "
                  "met when it was read. The log does not keep each record sent, so these are reads that may have "
                  "included your data."),
    "times": ("Số lần",
              "Times"),
    "from": ("Từ",
             "From"),
    "to": ("Đến",
           "To"),
    "condition": ("Điều kiện đọc",
                  "Condition"),
    "every_record": ("mọi bản ghi được cấp quyền",
                     "every record granted"),
    "scope": ("chỉ các bản ghi có {column} thuộc {values}",
              "only records whose {column} is in {values}"),
    "why_heading": ("5. Mục đích và căn cứ pháp lý",
                    "5. Purpose and legal basis"),
    "purpose": ("Mục đích",
                "Purpose"),
    "basis": ("Căn cứ pháp lý",
              "Legal basis"),
    "granted": ("Được cấp quyền",
                "Granted"),
    "granted_by_hand": ("Được cấp quyền trực tiếp (không qua đề nghị)",
                        "Granted directly (no request)"),
    "until": ("đến {until}",
              "until {until}"),
    "request": ("theo đề nghị {id}",
                "on request {id}"),
    "audit_note": ("Mỗi lượt đọc qua Nền tảng được ghi vào nhật ký truy cập, được bảo vệ bằng chuỗi băm để không "
                   "thể sửa hay xóa mà không bị phát hiện. Việc lập thông báo này cũng được ghi vào nhật ký.",
                   "Every read through the platform is written to its access log, protected by a hash chain so "
                   "that it cannot be changed or deleted unnoticed. Making this notice was logged too."),
    "status_200": ("đã cung cấp {rows} bản ghi",
                   "{rows} record(s) provided"),
    "status_404": ("không tìm thấy",
                   "not found"),
    "status_403": ("bị từ chối: không có quyền",
                   "refused: no grant"),
    "status_other": ("bị từ chối (mã {status})",
                     "refused (code {status})"),
    "kind_records": ("đọc danh sách bản ghi",
                     "a list of records"),
    "kind_changes": ("đồng bộ bản sao (dữ liệu thay đổi)",
                     "a kept copy's changes"),
    "kind_ckan_datastore_search": ("truy vấn qua API CKAN",
                                   "a CKAN API query"),
    "kind_export": ("tải xuống tệp {format}",
                    "a {format} download"),
    "kind_lookup": ("tra cứu một bản ghi",
                    "a lookup of one record"),
    "kind_lookup_live": ("tra cứu trực tiếp tại hệ thống nguồn",
                         "a live lookup at the source system"),
    "kind_lookup_warehouse": ("tra cứu trong bản sao của Nền tảng",
                              "a lookup in the platform's copy"),
    "kind_subject_report": ("lập một thông báo như thông báo này",
                            "the making of such a notice"),
    "kind_record_history": ("cán bộ của tỉnh xem lịch sử bản ghi (kiểm tra dữ liệu)",
                            "a province officer looked at the record's history (a data check)"),
    "kind_record_history_received": ("cán bộ của tỉnh xem lịch sử bản ghi và dữ liệu hệ thống nguồn đã gửi",
                                     "a province officer looked at the record's history and at what its source "
                                     "sent"),
    "kind_other": ("{action}",
                   "{action}"),
    "province_officer": ("Nền tảng dữ liệu của tỉnh (cán bộ: {by})",
                         "the province's data platform (officer: {by})"),
}
TEXT: dict[str, dict[str, str]] = {lang: {key: pair[i] for key, pair in MESSAGES.items()}
                                   for i, lang in enumerate(("vi", "en"))}


def write_notice(path: Path, report: dict[str, Any], catalog: Catalog, engine: sa.Engine, by: str,
                 lang: str = "vi") -> Path:
    """`render` the report with the agencies' registered names (gateway_agency), written to `path` atomically
    (a reader never finds half a notice). Raises OSError when it cannot be written."""
    from gateway import tables

    with engine.connect() as conn:
        names = dict(conn.execute(sa.select(tables.agency.c.agency_id, tables.agency.c.name)).tuples().all())
    page = render(report, catalog, names, by, lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    return path


def _local(at: datetime | None, lang: str) -> str:
    if at is None:
        return ""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(VIETNAM).strftime("%H:%M %d/%m/%Y" if lang == "vi" else "%Y-%m-%d %H:%M")


def _kind(action: str, text: dict[str, str]) -> str:
    if action.startswith("export_"):
        return text["kind_export"].format(format=action.split("_")[1].upper())
    key = f"kind_{action}"
    return text[key] if key in text else text["kind_other"].format(action=action)


def _result(status: int, rows: int | None, text: dict[str, str]) -> str:
    if status == 200:
        return text["status_200"].format(rows=rows or 0)
    return text.get(f"status_{status}", text["status_other"]).format(status=status)


def _condition(query: dict[str, Any], text: dict[str, str]) -> str:
    asked = [f"{column} {dict(eq='=', gte='≥', gt='>', lte='≤', lt='<').get(op, op)} "
             f"{', '.join(map(str, value)) if isinstance(value, list) else value}"
             for column, op, value in query.get("filters") or []]
    scope = [text["scope"].format(column=column, values=", ".join(map(str, values)))
             for column, values in (query.get("scope") or {}).items()]
    return "; ".join(asked + scope) or text["every_record"]


def render(report: dict[str, Any], catalog: Catalog, agencies: dict[str, str], by: str, lang: str = "vi",
           now: datetime | None = None) -> str:
    """The report (`gateway.disclosures.disclosures`) as a printable HTML page in `lang` (vi, en); `agencies`
    names the agencies by id."""
    if lang not in TEXT:
        raise ValueError(f"a notice is written in {' or '.join(TEXT)}, not {lang!r}")
    text = TEXT[lang]
    now = now or datetime.now(timezone.utc)

    def title(name: str) -> str:
        spec, shared = catalog.datasets.get(name), catalog.sharing.get(name)
        english = spec.title if spec is not None else name
        if lang != "vi":
            return english
        return (shared.title_vi if shared is not None else "") or (spec.title_vi if spec is not None else "") or english

    def column(name: str, c: str) -> str:
        spec = catalog.datasets[name].columns.get(c) if name in catalog.datasets else None
        if spec is None:
            return c
        return (spec.description_vi if lang == "vi" else "") or spec.description or c

    def named_agency(agency_id: str) -> str:
        if agency_id.startswith("province:"):
            return text["province_officer"].format(by=agency_id.split(":", 1)[1])
        return agencies.get(agency_id) or agency_id

    def version(v: dict[str, Any]) -> str:
        shown = ", ".join(f"{c} {value}" for c, value in v["values"].items() if value is not None)
        return text["version"].format(since=_local(v["since"], lang) or text["the_beginning"],
                                      until=_local(v["until"], lang), values=shown)

    held = [{"dataset": title(name), "now": text["records_now"].format(n=len(report["records"].get(name, [])))
             if report["records"].get(name) else text["none_now"],
             "earlier": [version(v) for v in report["earlier"].get(name, [])]}
            for name in sorted(set(report["records"]) | set(report["earlier"]))]
    kept = [{"dataset": title(name), "records": text["records_now"].format(n=len(held)),
             "named_as": [column(name, c) for c in dict.fromkeys(c for h in held for c in h["as"])]}
            for name, held in report.get("held", {}).items()]
    kept += [{"dataset": title(name), "records": text["quarantined"].format(n=len(rows)), "named_as": ""}
             for name, rows in report.get("quarantined", {}).items()]
    named = [{"when": _local(r["recorded_at"], lang), "agency": named_agency(r["agency_id"]),
              "dataset": title(r["dataset"]) if len(r.get("datasets") or ()) < 2 else [title(d) for d in r["datasets"]],
              "how": _kind(r["action"], text), "result": _result(r["status"], r["rows_returned"], text)}
             for r in report["named"]]
    may = [{"agency": named_agency(m["agency_id"]), "dataset": title(m["dataset"]), "how": _kind(m["action"], text),
            "times": m["reads"], "from": _local(m["first"], lang), "to": _local(m["last"], lang),
            "condition": _condition(m["query"], text)} for m in report["may_have"]]
    why = [{"agency": named_agency(g["agency_id"]), "dataset": title(g["dataset"]),
            "purpose": g["purpose"] or text["granted_by_hand"], "basis": g["legal_basis"] or "",
            "granted": _local(g["granted_at"], lang) + (
                " " + text["until"].format(until=_local(g["expires_at"], lang)) if g["expires_at"] else "")
            + (" (" + text["request"].format(id=g["request_id"]) + ")" if g["request_id"] else "")}
           for g in report["grants"]]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    since = report.get("since")
    return environment.get_template("disclosure.html").render(
        lang=lang, t=text, lead=text["lead"].format(id=mask(report["personal_id"], b"")),
        made=text["made"].format(when=_local(now, lang), by=by),
        period=text["period_since"].format(since=_local(since, lang)) if since else text["period_all"],
        held=held, kept=kept, named=named, may=may, why=why)

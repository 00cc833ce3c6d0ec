"""Every word the portal's pages say, in Vietnamese (the default) and English: one dict per language.

Both languages have the same keys (tests/test_gateway_portal.py checks). A message may hold markup
(it is ours, written here) and `{placeholders}`: `gateway.portal.Locale.say` fills them in with
escaped values (markupsafe's `Markup.format`). The catalog's own text (titles, descriptions) is in
catalog/sharing.yaml (`title_vi`, `description_vi`), and the columns' in catalog/datasets.yaml
(`description_vi`), not here.
"""
from __future__ import annotations

VI = {
    "site": "Cổng dữ liệu dùng chung tỉnh Ninh Bình",
    "page_title": "{page} - Cổng dữ liệu dùng chung tỉnh Ninh Bình",
    "skip": "Chuyển đến nội dung chính",
    "nav": "Điều hướng chính",
    "nav_datasets": "Bộ dữ liệu",
    "nav_api": "Tài liệu API",
    "other_language": "English",
    "footer": "Cổng chia sẻ dữ liệu lgsp cung cấp các trang này. Mọi lượt đọc bản ghi đều được ghi nhật ký. "
              "Kết nối bằng phần mềm: REST API (<code>/api/v1/datasets</code>) và CKAN Action API "
              "(<code>/api/3/action/package_list</code>).",
    # the catalog
    "catalog_heading": "Bộ dữ liệu dùng chung",
    "catalog_intro": "Các bộ dữ liệu tỉnh chia sẻ: bộ dữ liệu mở thì ai cũng có thể xem và tải về; bộ dữ liệu "
                     "hạn chế thì cơ quan, đơn vị chỉ được đọc khi đơn vị quản lý cấp quyền.",
    "search_label": "Tìm theo tên hoặc mô tả",
    "search": "Tìm kiếm",
    "found": "Tìm thấy {found} trên {total} bộ dữ liệu khớp với <q>{q}</q>.",
    "show_all": "Xem tất cả",
    "no_match": "Không có bộ dữ liệu nào phù hợp.",
    "show_all_datasets": "Xem tất cả bộ dữ liệu",
    # a dataset's facts
    "name": "Mã bộ dữ liệu",
    "owner": "Đơn vị quản lý",
    "licence": "Giấy phép",
    "access": "Quyền truy cập",
    "last_loaded": "Cập nhật lần cuối",
    "freshness": "Độ kịp thời",
    "freshness_fresh": '<span class="freshness fresh">Kịp thời</span>: được đồng bộ đầy đủ với hệ thống nguồn '
                       "ít nhất {warn} một lần",
    "freshness_warn": '<span class="freshness warn">Chậm</span>: lần đồng bộ đầy đủ gần nhất đã cách đây hơn {warn}',
    "freshness_stale": '<span class="freshness stale">Quá hạn</span>: lần đồng bộ đầy đủ gần nhất đã cách đây hơn '
                       "{stale}; dữ liệu có thể chưa phản ánh thay đổi mới ở hệ thống nguồn",
    "freshness_never": '<span class="freshness stale">Chưa đồng bộ</span>: chưa lần nào được đồng bộ đầy đủ với hệ '
                       "thống nguồn",
    "records": "Số bản ghi",
    "quality": "Chất lượng dữ liệu",
    "quality_line": "{overall} (thấp nhất trong các tiêu chí: hợp lệ {validity}, kịp thời {timeliness}, nhất quán "
                    "{consistency}, chính xác {accuracy})",
    "quality_short": "{overall} (thấp nhất: {weakest})",
    "dimension_validity": "hợp lệ",
    "dimension_timeliness": "kịp thời",
    "dimension_consistency": "nhất quán",
    "dimension_accuracy": "chính xác",
    "references": "Liên kết dữ liệu",
    "refers_to": "Tham chiếu tới",
    "reference_ok": "<code>{field}</code> → <code>{target}</code>: cả {rows} bản ghi đều khớp",
    "reference_orphans": "<code>{field}</code> → <code>{target}</code>: {matched}/{rows} bản ghi khớp; {orphans} bản "
                         "ghi tham chiếu tới bản ghi chưa có trên nền tảng",
    "group_checks": "Quy tắc giữa các bản ghi",
    "group_check_line": "{said}: {held}/{groups} nhóm đạt",
    "open": '<span class="access open">Mở</span>: ai cũng có thể đọc, không cần khóa API',
    "restricted": '<span class="access restricted">Hạn chế</span>: cần được cấp quyền',
    "key": "Khóa",
    "history": "Lịch sử",
    "history_current": "chỉ gồm phiên bản hiện hành của mỗi bản ghi",
    # the data dictionary
    "dictionary": "Từ điển dữ liệu",
    "dictionary_caption": "{count} cột được chia sẻ của <code>{name}</code>",
    "column": "Cột",
    "type": "Kiểu dữ liệu",
    "description": "Mô tả",
    "personal": "Dữ liệu cá nhân",
    "filterable": "Lọc được",
    "key_column": "(khóa)",
    "yes": "có",
    "no": "không",
    "personal_yes": "có: {policy}",
    "policy_mask": "che bớt (chỉ hiện vài ký tự cuối, ví dụ *********234)",
    "policy_pseudonym": "thay bằng bí danh (ps_ và một mã băm có khóa: cùng một người, cùng một bí danh)",
    "policy_withhold": "không cung cấp (để trống)",
    # how to get it
    "how_to_get": "Cách lấy dữ liệu",
    "open_how": "Dữ liệu mở: không cần khóa API.",
    "download_csv": "Tải CSV (toàn bộ bản ghi)",
    "restricted_how": "Hạn chế: cơ quan, đơn vị cần có khóa API và được cấp quyền truy cập bộ dữ liệu "
                      "<code>{name}</code>. Trong các ví dụ, thay <code>$KEY</code> bằng khóa API của đơn vị mình.",
    "route_records": "Bản ghi (REST API, theo trang; lọc và sắp xếp: xem /docs)",
    "route_ckan": "CKAN package_show",
    "route_changes": "Danh sách thay đổi (những gì đã thay đổi kể từ một mốc)",
    "route_csv": "Toàn bộ bản ghi dạng CSV",
    # the preview
    "preview": "Xem trước {count} bản ghi đầu",
    "preview_unavailable": "Hiện chưa xem trước được; vui lòng thử lại sau hoặc dùng API.",
    "no_records": "Chưa có bản ghi nào.",
    "preview_region": "Xem trước các bản ghi",
    "preview_caption": "{count} bản ghi đầu của <code>{name}</code>, theo thứ tự khóa",
    # how to ask for a grant
    "grant": "Cách đề nghị cấp quyền",
    "grant_how": "Bản ghi của bộ dữ liệu này không hiển thị tại đây. Cơ quan, đơn vị đã có khóa API gửi đề nghị "
                 "cấp quyền truy cập bộ dữ liệu <code>{name}</code> qua API, nêu rõ mục đích sử dụng, căn cứ pháp lý, "
                 "các cột dữ liệu cá nhân cần xem, thời hạn sử dụng và, nếu chỉ cần một phần bản ghi (của một xã), "
                 "phạm vi bản ghi (<code>scope</code>); đơn vị quản lý, <strong>{owner}</strong>, xem "
                 "xét và quyền truy cập được cấp ngay khi đề nghị được chấp thuận (theo dõi tại "
                 "<code>GET /api/v1/access-requests</code>, hoặc nhận thông báo quyết định qua "
                 "<code>GET /api/v1/events</code> hay một webhook). Cơ quan, đơn vị chưa có khóa API đề nghị "
                 "quản trị viên của tỉnh đăng ký và cấp khóa. Các cột dữ liệu cá nhân vẫn được bảo vệ như từ điển "
                 "dữ liệu mô tả, trừ khi quyền được cấp nêu rõ các cột đó.",
    # errors
    "error_400": "Yêu cầu không hợp lệ",
    "error_404": "Không tìm thấy",
    "error_429": "Quá nhiều yêu cầu",
    "error_500": "Đã xảy ra lỗi",
    "error_503": "Tạm thời gián đoạn",
    "explain_400": "Không thực hiện được yêu cầu này. Vui lòng kiểm tra lại địa chỉ trang.",
    "explain_404": "Không có trang này, hoặc không có bộ dữ liệu dùng chung nào mang tên này.",
    "explain_429": "Địa chỉ của bạn đã gửi quá nhiều yêu cầu trong thời gian ngắn. Vui lòng đợi {seconds} giây "
                   "rồi thử lại.",
    "explain_500": "Hệ thống gặp lỗi khi xử lý yêu cầu. Vui lòng thử lại sau.",
    "explain_503": "Hệ thống tạm thời chưa trả lời được. Vui lòng thử lại sau ít phút.",
    "back": "Quay lại danh sách bộ dữ liệu",
    # times
    "moment": "{moment} UTC ({ago})",
    "not_loaded": "chưa cập nhật lần nào",
    "just_now": "vừa xong",
    "day_ago_1": "{count} ngày trước",
    "day_ago": "{count} ngày trước",
    "hour_ago_1": "{count} giờ trước",
    "hour_ago": "{count} giờ trước",
    "minute_ago_1": "{count} phút trước",
    "minute_ago": "{count} phút trước",
    "day_n_1": "{count} ngày",
    "day_n": "{count} ngày",
    "hour_n_1": "{count} giờ",
    "hour_n": "{count} giờ",
    "minute_n_1": "{count} phút",
    "minute_n": "{count} phút",
}

EN = {
    "site": "Ninh Bình shared data portal",
    "page_title": "{page} - Ninh Bình shared data portal",
    "skip": "Skip to content",
    "nav": "Site",
    "nav_datasets": "Datasets",
    "nav_api": "API documentation",
    "other_language": "Tiếng Việt",
    "footer": "Served by the lgsp sharing gateway. Every read of records is audited. Machine access: the REST API "
              "(<code>/api/v1/datasets</code>) and the CKAN Action API (<code>/api/3/action/package_list</code>).",
    "catalog_heading": "Shared datasets",
    "catalog_intro": "The datasets the province shares: open ones anyone may read and download; restricted ones "
                     "an agency reads with a grant from their owner.",
    "search_label": "Search by name or description",
    "search": "Search",
    "found": "{found} of {total} datasets match <q>{q}</q>.",
    "show_all": "Show all",
    "no_match": "No dataset matches.",
    "show_all_datasets": "Show all datasets",
    "name": "Name",
    "owner": "Owner",
    "licence": "Licence",
    "access": "Access",
    "last_loaded": "Last loaded",
    "freshness": "Up to date",
    "freshness_fresh": '<span class="freshness fresh">Yes</span>: synced completely with its source system at least '
                       "every {warn}",
    "freshness_warn": '<span class="freshness warn">Behind</span>: its last complete sync is more than {warn} old',
    "freshness_stale": '<span class="freshness stale">Stale</span>: its last complete sync is more than {stale} old; '
                       "the data may miss recent changes at its source",
    "freshness_never": '<span class="freshness stale">Never synced</span>: not yet synced completely with its '
                       "source system",
    "records": "Records",
    "quality": "Data quality",
    "quality_line": "{overall} (the lowest of: valid {validity}, timely {timeliness}, consistent {consistency}, "
                    "accurate {accuracy})",
    "quality_short": "{overall} (lowest: {weakest})",
    "dimension_validity": "valid",
    "dimension_timeliness": "timely",
    "dimension_consistency": "consistent",
    "dimension_accuracy": "accurate",
    "references": "References",
    "refers_to": "Refers to",
    "reference_ok": "<code>{field}</code> → <code>{target}</code>: all {rows} records match",
    "reference_orphans": "<code>{field}</code> → <code>{target}</code>: {matched} of {rows} records match; {orphans} "
                         "name a record the platform does not have (yet)",
    "group_checks": "Rules across records",
    "group_check_line": "{said}: {held} of {groups} groups hold it",
    "open": '<span class="access open">Open</span>: anyone may read it, no key needed',
    "restricted": '<span class="access restricted">Restricted</span>: needs a grant',
    "key": "Key",
    "history": "History",
    "history_current": "the current version of each record",
    "dictionary": "Data dictionary",
    "dictionary_caption": "The {count} shared columns of <code>{name}</code>",
    "column": "Column",
    "type": "Type",
    "description": "Description",
    "personal": "Personal data",
    "filterable": "Filterable",
    "key_column": "(key)",
    "yes": "yes",
    "no": "no",
    "personal_yes": "yes: {policy}",
    "policy_mask": "masked (only the last characters shown, e.g. *********234)",
    "policy_pseudonym": "pseudonymised (ps_ and a keyed hash: the same person, the same pseudonym)",
    "policy_withhold": "withheld (empty)",
    "how_to_get": "How to get it",
    "open_how": "Open data: no key needed.",
    "download_csv": "Download all records as CSV",
    "restricted_how": "Restricted: an agency needs an API key and a grant on <code>{name}</code>. Replace "
                      "<code>$KEY</code> in the examples with your agency's key.",
    "route_records": "Records (REST API, in pages; filters and sort: /docs)",
    "route_ckan": "CKAN package_show",
    "route_changes": "Change feed (what changed since a token)",
    "route_csv": "All records as CSV",
    "preview": "Preview: the first {count} records",
    "preview_unavailable": "The preview is not available right now; try again later, or use the API.",
    "no_records": "No records yet.",
    "preview_region": "Preview of the records",
    "preview_caption": "The first {count} records of <code>{name}</code>, in key order",
    "grant": "How to ask for a grant",
    "grant_how": "Records of this dataset are not shown here. An agency with an API key asks for a grant on "
                 "<code>{name}</code> through the API, saying what for, on what legal basis, which personal columns "
                 "it needs, until when and, when it needs some records only (a commune's), which ones "
                 "(<code>scope</code>); the owner, <strong>{owner}</strong>, decides, and the grant is made as "
                 "soon as the request is approved (follow it at <code>GET /api/v1/access-requests</code>, or be told "
                 "of the decision by <code>GET /api/v1/events</code> or a webhook). An agency "
                 "without a key asks the province's administrator to register it. Personal columns stay protected "
                 "as the data dictionary says unless the grant names them.",
    "error_400": "Bad request",
    "error_404": "Not found",
    "error_429": "Too many requests",
    "error_500": "Something went wrong",
    "error_503": "Unavailable for a moment",
    "explain_400": "This request cannot be answered. Please check the page's address.",
    "explain_404": "There is no such page, or no shared dataset by that name.",
    "explain_429": "Your address sent too many requests in a short time. Please wait {seconds} seconds and try "
                   "again.",
    "explain_500": "The portal failed to answer this request. Please try again later.",
    "explain_503": "The portal cannot answer right now. Please try again in a few minutes.",
    "back": "Back to the datasets",
    "moment": "{moment} UTC ({ago})",
    "not_loaded": "not loaded yet",
    "just_now": "just now",
    "day_ago_1": "{count} day ago",
    "day_ago": "{count} days ago",
    "hour_ago_1": "{count} hour ago",
    "hour_ago": "{count} hours ago",
    "minute_ago_1": "{count} minute ago",
    "minute_ago": "{count} minutes ago",
    "day_n_1": "{count} day",
    "day_n": "{count} days",
    "hour_n_1": "{count} hour",
    "hour_n": "{count} hours",
    "minute_n_1": "{count} minute",
    "minute_n": "{count} minutes",
}

MESSAGES = {"vi": VI, "en": EN}

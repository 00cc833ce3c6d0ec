"""The sharing gateway: agencies read the shared datasets they are granted, through a REST and a CKAN API.

    gateway.api        the FastAPI application (`create_app`), REST routes per shared dataset
    gateway.ckan       the CKAN-compatible Action API (/api/3/action/...)
    gateway.access     who is asking (API key, OAuth2 token), what they may read, rate limits
    gateway.agencies   the agency registry: agencies, hashed keys, OAuth2 clients, grants
    gateway.policy     what an agency sees of a personal-data column it is not granted
    gateway.records    filters, sorting, field selection, keyset pagination over the shared views
    gateway.audit      the append-only, hash-chained audit of every read; `verify`
    gateway.tables     the gateway's tables in the warehouse database
    gateway.cli        `lgsp serve`, `lgsp agencies ...`, `lgsp audit ...`
"""

"""The demo's agency: the gateway served for a moment, and an agency's copy of a shared dataset kept by
the change feed (`lgsp demo`, after the pipelines).

The demo registers `so_xay_dung` (Department of Construction) with a grant on `enterprise`, serves the
gateway in its own process (uvicorn in a thread, real HTTP on loopback) and runs `lgsp mirror`'s code
into `var/agency/so_xay_dung.db`. No secret is written anywhere: the agency gets a fresh API key each
demo (its earlier ones revoked), and the gateway uses `LGSP_GATEWAY_PSEUDONYM_KEY` when the environment
has it; otherwise a key for this demo only, so the copy's saved token (sealed under another key) is
refused and the copy is read afresh. With the variable set, every demo after the first applies only
what changed.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from catalog.models import Catalog
from gateway.mirror import Mirror, MirrorError, MirrorRun
from gateway.settings import KEY_VARIABLE, GatewaySettings
from lgsp.settings import Settings

AGENCY = "so_xay_dung"
AGENCY_NAME = "Sở Xây dựng (demo agency)"
DATASET = "enterprise"


def _gateway_settings(database_url: str) -> tuple[GatewaySettings, bool]:
    """The gateway's settings; True if its pseudonym key is this demo's own (the environment has none)."""
    from gateway.settings import load_gateway_settings

    if os.environ.get(KEY_VARIABLE):
        return load_gateway_settings(database_url), False
    os.environ[KEY_VARIABLE] = secrets.token_urlsafe(32)
    try:
        return load_gateway_settings(database_url), True
    finally:
        del os.environ[KEY_VARIABLE]


def _agency_key(database_url: str, catalog: Catalog) -> str:
    """The demo agency registered and granted `enterprise`, with a new API key (its earlier keys revoked)."""
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine

    registry = AgencyRegistry(_write_engine(database_url), catalog)
    try:
        known = {a["agency_id"]: a for a in registry.agencies()}
        if AGENCY not in known:
            registry.add_agency(AGENCY, AGENCY_NAME)
        for credential in known.get(AGENCY, {}).get("credentials", []):
            if "revoked" not in credential:
                registry.revoke_credential(credential.split(" ", 1)[0])
        registry.grant(AGENCY, DATASET, [])
        return registry.issue_api_key(AGENCY)
    finally:
        registry.engine.dispose()


def agency_copy(settings: Settings, catalog: Catalog) -> tuple[MirrorRun, Path]:
    """Serve the gateway, bring the demo agency's copy of `enterprise` up to date; what it did, and where."""
    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.serving import in_thread

    gateway_settings, ephemeral = _gateway_settings(settings.database_url)
    prepare_database(settings.database_url, catalog)
    key = _agency_key(settings.database_url, catalog)
    target = settings.home / "agency" / f"{AGENCY}.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    with in_thread(create_app(gateway_settings, catalog)) as base:
        copy = Mirror(base, DATASET, f"sqlite:///{target}", key, gateway_name=f"lgsp demo gateway ({settings.home})")
        try:
            try:
                run = copy.run()
            except MirrorError as exc:  # a token sealed under another key, or of a warehouse made anew
                if "--resync" not in str(exc):
                    raise
                copy.resync()
                run = copy.run()
                run.notes.append("read afresh: the saved token was not this gateway's"
                                 + (f" (set {KEY_VARIABLE} to keep the copy incremental)" if ephemeral else ""))
            return run, target
        finally:
            copy.close()

"""Deterministic synthetic data ("ground truth") served by the sandbox.

Every generator uses its own ``random.Random`` and a Faker('vi_VN') instance
seeded with ``seed_instance`` -- never the global random state -- so the same
``(seed, sizes, defect_rate)`` always yields identical rows. Each dataset
uses ``seed + its own offset`` so the streams are independent.

Example:
    >>> data = SandboxData.generate(seed=37, citizens=3, dossiers=2, sizes={"land_parcel": 5})
    >>> data.citizens[0]['personal_id'], data.dossiers[0]['dossier_id']
    ('001152946767', 'H37.59-250905-0001')
    >>> len(data.records("land_parcel")), data.defects("land_parcel")
    (5, {})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.citizens import CITIZEN_DEFECT_KINDS, CITIZEN_FIELDS, make_citizens, make_citizens_with_defects
from sandbox.civil_servants import make_civil_servants_with_defects
from sandbox.civil_status import make_civil_status_events_with_defects
from sandbox.documents import make_documents_with_defects
from sandbox.dossiers import DOSSIER_DEFECT_KINDS, DOSSIER_FIELDS, make_dossiers, make_dossiers_with_defects
from sandbox.dvcqg_rest import make_procedures
from sandbox.enterprises import make_enterprises_with_defects
from sandbox.households import make_household_members_with_defects
from sandbox.land import make_land_parcels_with_defects

try:
    from sandbox.health_insurance import make_health_insurance_cards_with_defects
except ImportError:  # the module's own name for it
    from sandbox.health_insurance import make_cards_with_defects as make_health_insurance_cards_with_defects

__all__ = [
    "CITIZEN_DEFECT_KINDS", "CITIZEN_FIELDS", "DATASET_KEYS", "DEFAULT_SIZE", "DOSSIER_DEFECT_KINDS",
    "DOSSIER_FIELDS", "SandboxData", "make_citizens", "make_dossiers", "record_key",
]

DATASET_KEYS: dict[str, str | tuple[str, ...]] = {
    "citizen": "personal_id",
    "dossier": "dossier_id",
    "civil_status_event": "event_id",
    "household_member": ("household_id", "personal_id"),
    "land_parcel": "parcel_id",
    "enterprise": "tax_code",
    "civil_servant": "servant_id",
    "document": "document_id",
    "procedure": "MaTTHC",
    "health_insurance_card": "card_no",
}
"""Every pull dataset the sandbox serves -> its key field (or fields: :func:`record_key` joins them)."""

DEFAULT_SIZE = 400
"""Rows per dataset other than citizens and dossiers, unless ``sizes`` says otherwise."""
DEFAULT_PROCEDURES = 120
"""The DVCQG catalogue size (``make_procedures`` accepts 30..155)."""

_ATTRIBUTES: dict[str, tuple[str, str | None]] = {
    "citizen": ("citizens", "citizen_defects"),
    "dossier": ("dossiers", "dossier_defects"),
    "civil_status_event": ("civil_status_events", "civil_status_event_defects"),
    "household_member": ("household_members", "household_member_defects"),
    "land_parcel": ("land_parcels", "land_parcel_defects"),
    "enterprise": ("enterprises", "enterprise_defects"),
    "civil_servant": ("civil_servants", "civil_servant_defects"),
    "document": ("documents", "document_defects"),
    "procedure": ("procedures", None),
    "health_insurance_card": ("health_insurance_cards", "health_insurance_card_defects"),
}
"""Dataset -> (rows attribute, defects attribute) of :class:`SandboxData`."""

Generator = Callable[[int, int, float], tuple[list[dict[str, Any]], dict[str, str]]]
_GENERATORS: dict[str, tuple[Generator, int]] = {
    "civil_status_event": (make_civil_status_events_with_defects, 2_000_003),
    "land_parcel": (make_land_parcels_with_defects, 3_000_017),
    "enterprise": (make_enterprises_with_defects, 4_000_037),
    "civil_servant": (make_civil_servants_with_defects, 5_000_011),
    "document": (make_documents_with_defects, 6_000_023),
    "health_insurance_card": (make_health_insurance_cards_with_defects, 7_000_003),
}
"""Datasets with defects beyond citizens/dossiers -> (generator, seed offset)."""
_DOSSIER_SEED_OFFSET = 1_000_003
"""Dossiers use ``seed + offset`` so the two original streams are independent."""
_PROCEDURE_SEED_OFFSET = 8_000_009
_HOUSEHOLD_SEED_OFFSET = 9_000_011


@dataclass(frozen=True)
class SandboxData:
    """Everything the simulated systems serve, plus the injected defects.

    Rows are dicts with Python values (``date``, aware ``datetime``, ``float``,
    ``bool``, ``str``), each list sorted by ``(updated_at, key)`` -- the order
    the services use; defects are ``{key: kind}``.

    Attributes:
        seed: The seed it was generated from.
        citizens: Population database (8 keys, see ``sandbox.citizens``).
        dossiers: TTHC dossiers (14 keys, see ``sandbox.dossiers``).
        citizen_defects: e.g. ``{'03719001234': 'cccd_length'}``.
        dossier_defects: e.g. ``{'H37.01-250815-0003': 'channel_unknown'}``.
        civil_status_events: see ``sandbox.civil_status``.
        household_members: see ``sandbox.households`` (the households behind the good events' births and
            deaths, then random ones); defects are keyed ``'household_id|personal_id'``.
        land_parcels: see ``sandbox.land``.
        enterprises: see ``sandbox.enterprises``.
        civil_servants: see ``sandbox.civil_servants``.
        documents: see ``sandbox.documents``.
        procedures: DVCQG procedure catalogue (``sandbox.dvcqg_catalog``), no defects.
        health_insurance_cards: see ``sandbox.health_insurance``.
    """

    seed: int
    citizens: list[dict[str, Any]]
    dossiers: list[dict[str, Any]]
    citizen_defects: dict[str, str] = field(default_factory=dict)
    dossier_defects: dict[str, str] = field(default_factory=dict)
    civil_status_events: list[dict[str, Any]] = field(default_factory=list)
    civil_status_event_defects: dict[str, str] = field(default_factory=dict)
    household_members: list[dict[str, Any]] = field(default_factory=list)
    household_member_defects: dict[str, str] = field(default_factory=dict)
    land_parcels: list[dict[str, Any]] = field(default_factory=list)
    land_parcel_defects: dict[str, str] = field(default_factory=dict)
    enterprises: list[dict[str, Any]] = field(default_factory=list)
    enterprise_defects: dict[str, str] = field(default_factory=dict)
    civil_servants: list[dict[str, Any]] = field(default_factory=list)
    civil_servant_defects: dict[str, str] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    document_defects: dict[str, str] = field(default_factory=dict)
    procedures: list[dict[str, Any]] = field(default_factory=list)
    health_insurance_cards: list[dict[str, Any]] = field(default_factory=list)
    health_insurance_card_defects: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, seed: int = 37, citizens: int = 2000, dossiers: int = 6000,
                 defect_rate: float = 0.01, sizes: dict[str, int] | None = None) -> SandboxData:
        """Generate every dataset from one seed.

        Args:
            seed: Master seed (citizens use ``seed``, the others ``seed + offset``).
            citizens: Number of citizens (``sizes["citizen"]`` wins if given).
            dossiers: Number of dossiers (``sizes["dossier"]`` wins if given).
            defect_rate: Fraction of defective rows in each dataset.
            sizes: Row counts by dataset name (:data:`DATASET_KEYS`), e.g.
                ``{"land_parcel": 50}``; others get :data:`DEFAULT_SIZE`
                (procedures: :data:`DEFAULT_PROCEDURES`).
        """
        sizes = dict(sizes or {})
        unknown = set(sizes) - set(DATASET_KEYS)
        if unknown:
            raise ValueError(f"unknown dataset(s) in sizes: {sorted(unknown)}; known: {sorted(DATASET_KEYS)}")
        people, people_defects = make_citizens_with_defects(seed, sizes.get("citizen", citizens), defect_rate)
        files, file_defects = make_dossiers_with_defects(
            seed + _DOSSIER_SEED_OFFSET, sizes.get("dossier", dossiers), defect_rate)
        fields: dict[str, Any] = {
            "procedures": make_procedures(seed + _PROCEDURE_SEED_OFFSET, sizes.get("procedure", DEFAULT_PROCEDURES)),
        }
        for dataset, (generator, offset) in _GENERATORS.items():
            rows_attr, defects_attr = _ATTRIBUTES[dataset]
            rows, defects = generator(seed + offset, sizes.get(dataset, DEFAULT_SIZE), defect_rate)
            fields[rows_attr] = rows
            fields[str(defects_attr)] = defects
        good_events = [e for e in fields["civil_status_events"] if e["event_id"] not in
                       fields["civil_status_event_defects"]]
        fields["household_members"], fields["household_member_defects"] = make_household_members_with_defects(
            seed + _HOUSEHOLD_SEED_OFFSET, sizes.get("household_member", DEFAULT_SIZE), defect_rate, good_events)
        return cls(seed, people, files, people_defects, file_defects, **fields)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(self.records(name))}" for name in DATASET_KEYS)
        return f"SandboxData(seed={self.seed}, {counts}, defects={sum(len(self.defects(n)) for n in DATASET_KEYS)})"

    def records(self, dataset: str) -> list[dict[str, Any]]:
        """The ground-truth rows of ``dataset`` (a :data:`DATASET_KEYS` name), in service order."""
        return getattr(self, _attributes(dataset)[0])  # type: ignore[no-any-return]

    def defects(self, dataset: str) -> dict[str, str]:
        """``{key: defect_kind}`` of ``dataset`` (empty for procedures)."""
        defects_attr = _attributes(dataset)[1]
        return {} if defects_attr is None else getattr(self, defects_attr)  # type: ignore[no-any-return]

    def citizen(self, personal_id: str) -> dict[str, Any] | None:
        """Return the citizen with that id, or ``None``."""
        return next((c for c in self.citizens if c["personal_id"] == personal_id), None)

    def dossier(self, dossier_id: str) -> dict[str, Any] | None:
        """Return the dossier with that id, or ``None``."""
        return next((d for d in self.dossiers if d["dossier_id"] == dossier_id), None)


def record_key(dataset: str, row: dict[str, Any]) -> str:
    """``row``'s key as lgsp writes a record key: ``'HS37-...'``, or ``'HK37-14464-000012|037325004211'``."""
    key = DATASET_KEYS[dataset]
    return str(row[key]) if isinstance(key, str) else "|".join(str(row[k]) for k in key)


def _attributes(dataset: str) -> tuple[str, str | None]:
    try:
        return _ATTRIBUTES[dataset]
    except KeyError:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_KEYS)}") from None

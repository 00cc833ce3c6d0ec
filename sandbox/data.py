"""Deterministic synthetic data ("ground truth") served by the sandbox.

Every generator uses its own ``random.Random(seed)`` and a Faker('vi_VN')
instance seeded with ``seed_instance`` -- never the global random state -- so
the same ``(seed, count, defect_rate)`` always yields identical rows.

Example:
    >>> data = SandboxData.generate(seed=37, citizens=3, dossiers=2)
    >>> data.citizens[0]['personal_id'], data.dossiers[0]['dossier_id']
    ('001152946767', 'H37.59-250905-0001')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.citizens import CITIZEN_DEFECT_KINDS, CITIZEN_FIELDS, make_citizens, make_citizens_with_defects
from sandbox.dossiers import DOSSIER_DEFECT_KINDS, DOSSIER_FIELDS, make_dossiers, make_dossiers_with_defects

__all__ = [
    "CITIZEN_DEFECT_KINDS", "CITIZEN_FIELDS", "DOSSIER_DEFECT_KINDS", "DOSSIER_FIELDS",
    "SandboxData", "make_citizens", "make_dossiers",
]

_DOSSIER_SEED_OFFSET = 1_000_003
"""Dossiers use ``seed + offset`` so the two streams are independent."""


@dataclass(frozen=True)
class SandboxData:
    """Everything both simulated systems serve, plus the injected defects.

    Attributes:
        seed: The seed it was generated from.
        citizens: Citizen dicts (8 keys, see ``sandbox.citizens``), sorted by
            ``(updated_at, personal_id)`` -- the order ListChangedCitizens uses.
        dossiers: Dossier dicts (14 keys, see ``sandbox.dossiers``), sorted by
            ``(updated_at, dossier_id)`` -- the order of the REST API.
        citizen_defects: ``{personal_id: kind}``, e.g. ``{'03719001234': 'cccd_length'}``.
        dossier_defects: ``{dossier_id: kind}``, e.g. ``{'H37.01-250815-0003': 'channel_unknown'}``.
    """

    seed: int
    citizens: list[dict[str, Any]]
    dossiers: list[dict[str, Any]]
    citizen_defects: dict[str, str] = field(default_factory=dict)
    dossier_defects: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, seed: int = 37, citizens: int = 2000, dossiers: int = 6000,
                 defect_rate: float = 0.01) -> SandboxData:
        """Generate both datasets from one seed.

        Args:
            seed: Master seed (citizens use ``seed``, dossiers ``seed + 1_000_003``).
            citizens: Number of citizens.
            dossiers: Number of dossiers.
            defect_rate: Fraction of defective rows in each dataset.
        """
        people, people_defects = make_citizens_with_defects(seed, citizens, defect_rate)
        files, file_defects = make_dossiers_with_defects(seed + _DOSSIER_SEED_OFFSET, dossiers, defect_rate)
        return cls(seed, people, files, people_defects, file_defects)

    def __repr__(self) -> str:
        return (f"SandboxData(seed={self.seed}, citizens={len(self.citizens)}, dossiers={len(self.dossiers)}, "
                f"citizen_defects={len(self.citizen_defects)}, dossier_defects={len(self.dossier_defects)})")

    def citizen(self, personal_id: str) -> dict[str, Any] | None:
        """Return the citizen with that id, or ``None``."""
        return next((c for c in self.citizens if c["personal_id"] == personal_id), None)

    def dossier(self, dossier_id: str) -> dict[str, Any] | None:
        """Return the dossier with that id, or ``None``."""
        return next((d for d in self.dossiers if d["dossier_id"] == dossier_id), None)

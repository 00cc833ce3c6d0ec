"""Loopback simulators of two external systems, serving deterministic synthetic data.

* National population database: SOAP 1.1 (spyne), ``GetCitizen`` and
  ``ListChangedCitizens`` -- see :mod:`sandbox.population_soap`.
* Provincial TTHC (administrative procedure) system: JSON REST -- see
  :mod:`sandbox.tthc_rest`.

Example:
    >>> from sandbox import start_sandbox
    >>> with start_sandbox(seed=37, citizens=300, dossiers=500) as sb:
    ...     zeep.Client(sb.population_wsdl).service.GetCitizen(sb.data.citizens[0]["personal_id"])
"""

from sandbox import _spyne_compat  # noqa: F401  (before any spyne import)
from sandbox.data import SandboxData
from sandbox.faults import FaultPlan
from sandbox.server import SandboxHandle, start_sandbox

__all__ = ["FaultPlan", "SandboxData", "SandboxHandle", "start_sandbox"]

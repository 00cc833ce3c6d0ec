"""Loopback simulators of the external systems a province exchanges with, serving deterministic synthetic data.

One server per system (see :data:`sandbox.server.SYSTEMS`), each with its own
:class:`FaultPlan`:

* population (SOAP, :mod:`sandbox.population_soap`), civil_status (SOAP +
  WS-Security, :mod:`sandbox.civil_status_soap`), reporting (SOAP push,
  :mod:`sandbox.reporting_soap`);
* tthc (REST, X-API-Key, :mod:`sandbox.tthc_rest`), land (REST, OAuth2 client
  credentials, :mod:`sandbox.land_rest`), business (REST, HTTP Basic,
  :mod:`sandbox.business_rest`), civil_servants (REST over mutual TLS,
  :mod:`sandbox.civil_servants_rest`), dvcqg (REST session login,
  :mod:`sandbox.dvcqg_rest`), documents (REST, bearer token,
  :mod:`sandbox.documents_rest`), health_insurance (REST, X-API-Key,
  :mod:`sandbox.health_insurance_rest`).

Example:
    >>> from sandbox import start_sandbox
    >>> with start_sandbox(seed=37, citizens=300, dossiers=500) as sb:
    ...     zeep.Client(sb.population_wsdl).service.GetCitizen(sb.data.citizens[0]["personal_id"])
    ...     os.environ.update(sb.env())   # lgsp's catalog now points at the sandbox
"""

from sandbox import _spyne_compat  # noqa: F401  (before any spyne import)
from sandbox.data import DATASET_KEYS, SandboxData
from sandbox.faults import FaultBoard, FaultPlan, with_faults
from sandbox.server import SYSTEMS, SandboxCredentials, SandboxHandle, serve_wsgi, start_sandbox

__all__ = [
    "DATASET_KEYS", "SYSTEMS", "FaultBoard", "FaultPlan", "SandboxCredentials", "SandboxData",
    "SandboxHandle", "serve_wsgi", "start_sandbox", "with_faults",
]

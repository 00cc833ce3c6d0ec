"""Quality: vectorised row rules (bad rows -> quarantine) and dataset-level Great Expectations."""
from quality.checks import Rejection, RowCheckResult, row_checks, run_row_checks
from quality.expectations import ExpectationOutcome, QualityError, suite_definition, validate_dataset
from quality.rules import RULES

__all__ = ["RULES", "ExpectationOutcome", "QualityError", "Rejection", "RowCheckResult",
           "row_checks", "run_row_checks", "suite_definition", "validate_dataset"]

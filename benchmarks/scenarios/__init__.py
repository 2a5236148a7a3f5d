"""The ten scenarios of the suite, one module each; every one records its figures and its checks.

1. `concurrency_sweep`  2. `overload`  3. `disconnect_storm`  4. `multi_turn`  5. `gateway_ceiling`
6. `memory`  7. `frontend`  8. `fairness`  9. `routing`  10. `responses_chain`. `suite` runs them;
`context` is what they share.
"""

from benchmarks.scenarios.checks import Check
from benchmarks.scenarios.suite import SCENARIOS, SuiteResult, run_suite

__all__ = ["SCENARIOS", "Check", "SuiteResult", "run_suite"]

"""PCIe rule checker for TLP traces: the precise meaning of "legal PCIe" in this project.

* ``spec``     the rule table (id, spec section, the sentence each rule enforces) and byte-enable arithmetic;
* ``state``    the report and the outstanding-request state, with the one judgement of a completion;
* ``stream``   the reference checker, record by record (live in testbenches, JSON-lines files);
* ``columnar`` the same rules vectorised over column chunks (``.npz`` files), equal counts by test;
* ``nic``      the NIC causality chains both checkers feed.
"""

from phantom.rules.spec import RULES, Group, Rule, Severity, request_bytes
from phantom.rules.state import Report, Violation
from phantom.rules.stream import Checker, check_file, check_records, validate_waivers

__all__ = ["RULES", "Group", "Rule", "Severity", "request_bytes", "Report", "Violation", "Checker", "check_file",
           "check_records", "validate_waivers"]

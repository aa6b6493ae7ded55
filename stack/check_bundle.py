"""`obsgen check DIR`: the checks for the kind of bundle DIR holds.

Above both stack.check (compose and local bundles) and stack.check_kubernetes (which reuses
stack.check's adapters on the groups and configs it extracts), so neither imports the other back.
"""

from __future__ import annotations

import os
from pathlib import Path

from stack import check, check_kubernetes
from stack.check import CheckResult


def run_checks(bundle: str | os.PathLike) -> list[CheckResult]:
    root = Path(bundle).resolve()
    if check_kubernetes.is_kubernetes_bundle(root):
        return check_kubernetes.run_checks(root)
    return check.run_checks(root)

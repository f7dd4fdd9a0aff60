"""The restricted loader: unpickling store content as data, without running its code.

Modules, one job each: `names` (global names and trust patterns), `policy` (admission),
`reconstructors` (checked constructors), `data` (what counts as data), `state` (BUILD
rules), `bounds` (sizes and numbers), `checks` (structural checks on the final objects),
`audit` (the second wall), `unpickler`, `joblib_arrays`, `decompress` (joblib files
that joblib compressed), `report` (what a scan found) and `loader` (entry points).
docs/SECURITY.md states the invariant and which wall stops each attack.
"""

from castore.safety.loader import load_joblib, load_pickle, scan_joblib, scan_pickle
from castore.safety.names import Pattern, Trustable
from castore.safety.policy import TRUSTED_GLOBALS_FILE, Allowlist, trusted_globals_path
from castore.safety.report import GlobalUse, Scan, hint

__all__ = [
    "TRUSTED_GLOBALS_FILE",
    "Allowlist",
    "GlobalUse",
    "Pattern",
    "Scan",
    "Trustable",
    "hint",
    "load_joblib",
    "load_pickle",
    "scan_joblib",
    "scan_pickle",
    "trusted_globals_path",
]

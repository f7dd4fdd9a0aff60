"""What a scan found: the globals a stream names, the policy's verdict on each, and what
would make the refused ones load.
"""

from __future__ import annotations

from dataclasses import dataclass

from castore.errors import UnsafeObjectError
from castore.safety.names import under_any
from castore.safety.policy import Admission, trusted_globals_path

CODE_BY_VALUE = ("cloudpickle", "dill")
"""Packages whose globals rebuild functions and classes pickled by value."""


def pickles_code(refused: tuple[str, ...]) -> bool:
    """Whether `refused` holds globals that rebuild code pickled by value (cloudpickle)."""
    return any(under_any(name, CODE_BY_VALUE) for name in refused)


def trusted_argument(refused: tuple[str, ...]) -> str:
    """The ``trusted=[...]`` argument of a load that admits every global in `refused`."""
    return f"trusted={list(refused)!r}"


def advice(refused: tuple[str, ...]) -> str:
    """What a user who trusts the author of a stream that needs `refused` can do."""
    if pickles_code(refused):
        return (
            "It holds functions or classes pickled by value (cloudpickle), which run their own "
            "code when loaded: no trusted= entry makes that safe. If you trust whoever saved "
            "it, have the version signed by a key you trust, or load it with allow_unsafe=True"
        )
    allow = (
        f"allow {'it' if len(refused) == 1 else 'them'} with {trusted_argument(refused)} (or "
        f"lines in {trusted_globals_path()}), "
        if refused
        else ""
    )
    return (
        f"If you trust whoever saved it, {allow}have the version signed by a key you trust, "
        "or load it with allow_unsafe=True"
    )


def hint(refused: tuple[str, ...]) -> str:
    """What a refusal adds to its message: nothing ran, and `advice`."""
    return f"nothing from it was run. {advice(refused)}"


@dataclass(frozen=True)
class GlobalUse:
    """One global a stream names, and what the policy makes of it."""

    name: str
    """``module.qualified_name``, as the stream names it."""
    use: str
    """"called" (the stream may call it: a constructor or a checked reconstruction helper),
    "held" (a value the loaded object may hold, or an argument of checked helpers only) or
    "refused"."""
    reason: str
    """Why the policy admits or refuses it."""
    trusted: bool = False
    """Admitted by the user's trust (``trusted=``, the trusted_globals file), not by the
    built-in rules."""

    @classmethod
    def of(cls, name: str, decision: Admission | UnsafeObjectError) -> GlobalUse:
        """The report of the unpickler's decision on the global `name`."""
        if isinstance(decision, UnsafeObjectError):
            return cls(name, "refused", decision.reason)
        return cls(name, decision.use, decision.reason, decision.trusted)


@dataclass(frozen=True)
class Scan:
    """Every global a stream names, in the order it names them, and the policy's verdict
    on each. Nothing of the stream was built to find them."""

    globals: tuple[GlobalUse, ...] = ()
    problem: str | None = None
    """Why reading stopped before the stream's end (globals named later are missing), or
    None when the whole stream was read."""

    @property
    def refused(self) -> tuple[str, ...]:
        """The refused globals, in order."""
        return tuple(g.name for g in self.globals if g.use == "refused")

    @property
    def admitted(self) -> bool:
        """Whether the whole stream was read and the policy admits every global it names.

        A load also checks every call, state and structure, which a scan does not.
        """
        return self.problem is None and not self.refused

    @property
    def trusted_argument(self) -> str | None:
        """The ``trusted=[...]`` load argument that admits every refused global (the same
        names, one per line, go in the trusted_globals file); None when nothing is refused
        or when no entry can admit what is (code pickled by value)."""
        if not self.refused or pickles_code(self.refused):
            return None
        return trusted_argument(self.refused)

    @property
    def advice(self) -> str | None:
        """What would make the stream load, when the policy refuses some of its globals."""
        return advice(self.refused) if self.refused else None

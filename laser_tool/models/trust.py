"""Which `python:MODULE:FUNCTION` factories laser-tool may call: only the ones you named yourself.

A factory is code. A run directory, a study's plan.json or a checkpoint's metadata names the factory
that built its model, but a file's word is never enough to run it: a run sent by someone else could name
`python:torch.hub:load` and its own hubconf.py, or any function with arguments that write files. So the
one place a factory is loaded (factory.load_factory) asks `check` first, and a factory passes only if

- it was named with `--arch` on this invocation's command line (train, info, import, study), or
- it was named so on an earlier invocation on this machine: `--arch` remembers it in your own settings,
  $XDG_CONFIG_HOME/laser-tool/trusted-factories.json (default ~/.config/laser-tool/), never in the run,
  so your own later `reduce RUN` or `export RUN` needs no repetition, or
- the invocation opted in to every factory its inputs name: `laser-tool --trust-code VERB ...` (the
  convention of transformers' trust_remote_code), or a library caller's `trust_factory(arch)`.

Trust is per factory (the arch string), not per set of --arch-arg values: name only functions that
build models. Everything else (reading, comparing, plotting, inspecting) refuses in one line.
"""
import json
import os
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write_json

FILE = "trusted-factories.json"
_named = set()          # factories named on this invocation's command line (or by a library caller)
_trust_all = False      # --trust-code on this invocation


class UntrustedCode(UserError):
    """A factory named by a file, not by the user."""


def settings_file() -> Path:
    """The user's own settings on this machine (XDG base directory rules)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "laser-tool" / FILE


def remembered() -> set:
    """The factories named on this machine's earlier command lines; an unreadable file trusts nothing."""
    try:
        d = json.loads(settings_file().read_text())
        return {a for a in d.get("factories", []) if isinstance(a, str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def begin_invocation(trust_code: bool = False) -> None:
    """A new command line: nothing named yet; `trust_code` is the invocation's --trust-code."""
    global _trust_all
    _named.clear()
    _trust_all = bool(trust_code)


def trust_factory(arch: str, remember: bool = True) -> bool:
    """Allow `arch` for this process and (remember=True) for later invocations of this user. Returns
    False when the settings file could not be written (the factory is still allowed for this process)."""
    _named.add(arch)
    if not remember or arch in remembered():
        return True
    try:
        atomic_write_json(settings_file(), {"written_by": "laser-tool", "factories": sorted(remembered() | {arch})})
    except (OSError, UserError):
        return False
    return True


def granted() -> tuple:
    """This invocation's trust, to hand to the workers it spawns (a study's --jobs N processes, submitit
    jobs): they run steps of the same command line, so what it named or opted into holds for them too."""
    return tuple(sorted(_named)), _trust_all


def grant(trust: tuple) -> None:
    """In a spawned worker: take over the trust of the invocation that started it (`granted()`)."""
    global _trust_all
    named, trust_all = trust
    _named.update(named)
    _trust_all = _trust_all or bool(trust_all)


def check(arch: str) -> None:
    """Refuse (one line) a factory the user never named; call before importing anything of it."""
    if _trust_all or arch in _named or arch in remembered():
        return
    raise UntrustedCode(f"{arch} is code named by a file, not by you, and laser-tool never runs code on a file's "
                        f"word; if you trust where it came from, name it yourself (--arch {arch} on a train, study, "
                        f"import or info command line) or run `laser-tool --trust-code ...`")

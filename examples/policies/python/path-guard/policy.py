"""`path-guard`, in Python: refuses a `tools/call` whose arguments name a filesystem path
outside the allowed folders, and tags the calls it checked for later stages.

The same policy as examples/policies/rust (the reference): same settings, same verdicts,
same error, same attributes. A string argument (at any depth; object keys in sorted order)
counts as a path when it starts with `/`, `~` or `file://`, or has a `..` component. Paths
are resolved lexically and compared component by component with `allowed-prefixes`.

Build, from the repository root (installs componentize-py on first use):

    examples/policies/build python examples/policies/python/path-guard
"""

import re
from typing import Any, Optional

import portcullis_policy as portcullis
from portcullis_policy import ConfigError, Message, Phase, Stage, Verdict

CHECKED = "path-guard.checked"  # set on every call path-guard checked and let through
PATHS = "path-guard.paths"      # how many path arguments the call had

_SEPARATORS = re.compile(r"[/\\]")

# Roots of a path: where it starts.
ABSOLUTE, HOME, RELATIVE = "absolute", "home", "relative"


def normalize(path: str) -> Optional[tuple[str, list[str]]]:
    """(root, components) with `.` and `..` resolved; None when `..` climbs above the root."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if path.startswith("~"):
        root, rest = HOME, path[1:]
    elif path.startswith(("/", "\\")):
        root, rest = ABSOLUTE, path
    else:
        root, rest = RELATIVE, path
    parts: list[str] = []
    for part in _SEPARATORS.split(rest):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return root, parts


def looks_like_path(s: str) -> bool:
    """Starts with `/`, `~` or `file://`, or has a `..` component."""
    return s.startswith(("/", "~", "file://")) or ".." in _SEPARATORS.split(s)


def is_allowed(path: str, allowed: list[tuple[str, list[str]]]) -> bool:
    p = normalize(path)
    if p is None or p[0] == RELATIVE:
        return False
    root, parts = p
    return any(root == f_root and parts[: len(f_parts)] == f_parts for f_root, f_parts in allowed)


def first_outside(value: Any, allowed, at: str = "") -> Optional[str]:
    """Where the first path outside `allowed` is (e.g. `files[1].src`), depth first."""
    if isinstance(value, str):
        return at if looks_like_path(value) and not is_allowed(value, allowed) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = first_outside(item, allowed, f"{at}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key in sorted(value):
            found = first_outside(value[key], allowed, f"{at}.{key}" if at else key)
            if found is not None:
                return found
    return None


def count_paths(value: Any) -> int:
    if isinstance(value, str):
        return int(looks_like_path(value))
    if isinstance(value, list):
        return sum(count_paths(v) for v in value)
    if isinstance(value, dict):
        return sum(count_paths(v) for v in value.values())
    return 0


class Policy(portcullis.Policy):
    INFO = portcullis.info("path-guard", "0.1.0", Stage.AUTHZ, [Phase.REQUEST])

    # Set by `init`, once per instance.
    allowed: list = []
    tag_identity = False

    def init(self, config: dict) -> None:
        portcullis.check_keys(config, "allowed-prefixes", "tag-identity")
        prefixes = config.get("allowed-prefixes", [])
        tag = config.get("tag-identity", False)
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise ConfigError("allowed-prefixes: expected a list of strings")
        if not isinstance(tag, bool):
            raise ConfigError("tag-identity: expected true or false")
        allowed = []
        for prefix in prefixes:
            folder = normalize(prefix)
            if folder is None or folder[0] == RELATIVE:
                raise ConfigError(
                    f'allowed-prefixes: "{prefix}" must be an absolute path or start with `~`'
                )
            allowed.append(folder)
        Policy.allowed, Policy.tag_identity = allowed, tag

    def evaluate(self, msg: Message) -> Verdict:
        if msg.method() != "tools/call":
            return portcullis.allow()
        missing = object()
        args = portcullis.arguments(msg, default=missing)
        if args is missing:
            return portcullis.allow()
        at = first_outside(args, Policy.allowed)
        if at is not None:
            portcullis.log_info(
                f"refused {msg.target() or '?'}: argument {at} is outside the allowed folders"
            )
            return portcullis.deny(
                portcullis.DENIED,
                f"path-guard: argument `{at}` names a path outside the allowed folders",
                data={"argument": at},
            )
        identity = msg.identity() if Policy.tag_identity else None
        return portcullis.modify(
            attributes={CHECKED: "true", PATHS: str(count_paths(args))},
            identity=portcullis.with_attribute(identity, CHECKED, "true") if identity else None,
        )

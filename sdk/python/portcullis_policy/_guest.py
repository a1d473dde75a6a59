"""The policy API of `portcullis_policy` (imported by the package inside a component build).

The contract is `wit/policy.wit`, shipped inside this package; `portcullis-policy build` runs
componentize-py, which generates its bindings (`wit_world`) from that file at every build. This
module only makes them pleasant to use: verdict constructors, JSON parsing of the message's
payloads, logging, and a `Policy` base class that turns `init`'s JSON into a dict and an
exception into the error the gateway logs. The hooks have the WIT's names: `describe`
(returns the class's `INFO`), `init`, `evaluate`.

    import portcullis_policy as portcullis
    from portcullis_policy import Message, Phase, Stage, Verdict

    class Policy(portcullis.Policy):          # the class must be named `Policy`
        INFO = portcullis.info("block", "0.1.0", Stage.AUTHZ, [Phase.REQUEST])

        def init(self, config: dict) -> None:
            portcullis.check_keys(config, "blocked")
            Policy.blocked = set(config.get("blocked", []))

        def evaluate(self, msg: Message) -> Verdict:
            if msg.method() == "tools/call" and msg.target() in Policy.blocked:
                return portcullis.deny(portcullis.DENIED, f"{msg.target()} is disabled")
            return portcullis.allow()
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types
from wit_world.imports.types import Identity, Message, Phase, PluginInfo, Stage, Verdict

__all__ = [
    "Identity", "Message", "Phase", "PluginInfo", "Stage", "Verdict",
    "Policy", "ConfigError", "info", "allow", "deny", "modify", "with_attribute",
    "params", "arguments", "check_keys", "log_debug", "log_info", "log_warn", "log_error",
    "INVALID_REQUEST", "INVALID_PARAMS", "INTERNAL_ERROR", "DENIED", "UNAUTHENTICATED",
]

# JSON-RPC error codes, as in the Rust SDK's `codes`.
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
DENIED = -32003
UNAUTHENTICATED = -32004


class ConfigError(ValueError):
    """A bad setting. Its text goes to the gateway's log: name the setting and say why."""


class Policy(exports.Policy):
    """Base class for a policy. Subclass it as `Policy` in your app module and define:

    - `INFO`: what `portcullis.info(...)` returns (name, version, stage, phases), which
      `describe` returns;
    - `init(self, config: dict)`: check and keep the sidecar's `[config]`, parsed (raise
      `ConfigError` for a bad setting). Keep what you parse on the class, not on `self`.
      Optional: without it, any key in `[config]` is an error;
    - `evaluate(self, msg)`: return `allow()`, `deny(...)` or `modify(...)`.

    Every evaluation runs in a fresh instance that starts with `init`, so keep it quick.
    """

    INFO: PluginInfo

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The WIT's `init` takes the configuration as JSON text; the author's `init` takes
        # it parsed. Wrap the author's so the component exports the WIT's.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("init")
        if own is not None and not getattr(own, "_portcullis_wit", False):
            cls.init = _wit_init(own)

    def describe(self) -> PluginInfo:
        return type(self).INFO

    def evaluate(self, msg: Message) -> Verdict:
        raise NotImplementedError("define evaluate(self, msg) in your Policy class")


def _wit_init(parsed_init):
    """The WIT `init` (JSON text in, `Err` out) around an `init(self, config: dict)`."""

    def init(self, config: str) -> None:
        try:
            parsed = json.loads(config)
            if not isinstance(parsed, dict):
                raise ConfigError("the configuration must be a table")
            parsed_init(self, parsed)
        except (ConfigError, ValueError, TypeError) as e:
            raise Err(f"invalid config: {e}")

    init._portcullis_wit = True
    return init


# A policy without `init` accepts only an empty `[config]`.
Policy.init = _wit_init(lambda self, config: check_keys(config))


def info(name: str, version: str, stage: Stage, phases: Iterable[Phase] = (Phase.REQUEST,)) -> PluginInfo:
    """What the policy says about itself at load."""
    return PluginInfo(name, version, stage, list(phases))


def allow() -> Verdict:
    """Let the message pass unchanged."""
    return types.Verdict_Allow()


def deny(
    code: int,
    message: str,
    data: Any = None,
    http_status: Optional[int] = None,
    http_headers: Iterable[tuple[str, str]] = (),
) -> Verdict:
    """Refuse the message: the client gets JSON-RPC error `code` with `message` (and `data`,
    any JSON-serializable value). Never put secrets in either: clients and logs see them."""
    encoded = None if data is None else json.dumps(data, separators=(",", ":"))
    return types.Verdict_Deny(
        types.Denial(types.RpcError(code, message, encoded), http_status, list(http_headers))
    )


def modify(
    *,
    params: Any = None,
    result: Any = None,
    identity: Optional[Identity] = None,
    upstream: Optional[str] = None,
    target: Optional[str] = None,
    attributes: Mapping[str, str] | None = None,
) -> Verdict:
    """Let the message pass with changes; what is left out stays as it was. `params` and
    `result` are JSON-serializable values, `attributes` facts for later stages."""
    dump = lambda v: None if v is None else json.dumps(v, separators=(",", ":"))
    return types.Verdict_Modify(
        types.Changes(
            dump(params),
            dump(result),
            identity,
            upstream,
            target,
            [(k, str(v)) for k, v in (attributes or {}).items()],
        )
    )


def with_attribute(identity: Identity, key: str, value: str) -> Identity:
    """A copy of `identity` with attribute `key` set to `value` (replaced if present)."""
    if any(k == key for k, _ in identity.attributes):
        pairs = [(k, value if k == key else v) for k, v in identity.attributes]
    else:
        pairs = [*identity.attributes, (key, value)]
    return replace(identity, attributes=pairs)


def params(msg: Message) -> Any:
    """The request's params, parsed (`None` when it had none)."""
    text = msg.params()
    return None if text is None else json.loads(text)


def arguments(msg: Message, default: Any = None) -> Any:
    """`params.arguments` of a `tools/call`, parsed; `default` when absent (a JSON `null`
    argument list is `None`, not `default`)."""
    p = params(msg)
    if not isinstance(p, dict) or "arguments" not in p:
        return default
    return p["arguments"]


def check_keys(config: Mapping[str, Any], *known: str) -> None:
    """Raise `ConfigError` for a key outside `known`: a typo in the sidecar is an error at
    load, not a setting silently ignored."""
    for key in config:
        if key not in known:
            expected = " or ".join(f"`{k}`" for k in known) or "no settings"
            raise ConfigError(f"unknown field `{key}`, expected {expected}")


def _log(level: host.Level, message: str) -> None:
    host.log(level, message)


def log_debug(message: str) -> None:
    """A line in the gateway's log, tagged with the policy's name."""
    _log(host.Level.DEBUG, message)


def log_info(message: str) -> None:
    """A line in the gateway's log, tagged with the policy's name."""
    _log(host.Level.INFO, message)


def log_warn(message: str) -> None:
    """A line in the gateway's log, tagged with the policy's name."""
    _log(host.Level.WARN, message)


def log_error(message: str) -> None:
    """A line in the gateway's log, tagged with the policy's name."""
    _log(host.Level.ERROR, message)

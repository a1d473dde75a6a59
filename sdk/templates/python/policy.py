"""{{name}}: a Portcullis policy in Python.

What it does (replace it with your rule): refuses any tool whose name contains one of the
configured words (`delete` by default) unless the caller holds one of the configured roles
(`admin` by default), and hides those tools from such a caller's `tools/list`.
"""

import json

import portcullis_policy as portcullis
from portcullis_policy import ConfigError, Message, Phase, Stage, Verdict


def _strings(config: dict, key: str, default: list) -> frozenset:
    value = config.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings")
    return frozenset(value)


# componentize-py looks for a class named `Policy` in the module `policy`.
class Policy(portcullis.Policy):
    INFO = portcullis.info("{{name}}", "0.1.0", Stage.AUTHZ, [Phase.REQUEST, Phase.RESPONSE])

    words: frozenset = frozenset()
    roles: frozenset = frozenset()

    def init(self, config: dict) -> None:
        """The sidecar's [config] table. Raise ConfigError for a bad setting: the plugin then
        stays out of the chain and the message goes to the gateway's log."""
        portcullis.check_keys(config, "words", "roles")
        # Every evaluation runs in a fresh instance that starts here: keep state on the class.
        Policy.words = _strings(config, "words", ["delete"])
        Policy.roles = _strings(config, "roles", ["admin"])

    def evaluate(self, msg: Message) -> Verdict:
        identity = msg.identity()
        if identity is not None and Policy.roles.intersection(identity.roles):
            return portcullis.allow()

        def guarded(tool: str) -> bool:
            return any(word in tool for word in Policy.words)

        if msg.phase() == Phase.REQUEST and msg.method() == "tools/call":
            tool = msg.target() or ""
            if not guarded(tool):
                return portcullis.allow()
            portcullis.log_info(f"refused {tool}")
            return portcullis.deny(portcullis.DENIED, f"{tool} needs one of the roles {sorted(Policy.roles)}")
        if msg.phase() == Phase.RESPONSE and msg.method() == "tools/list":
            text = msg.result()
            result = json.loads(text) if text is not None else None
            tools = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(tools, list):
                return portcullis.allow()
            kept = [t for t in tools if not (isinstance(t, dict) and guarded(str(t.get("name", ""))))]
            if len(kept) == len(tools):
                return portcullis.allow()
            result["tools"] = kept
            return portcullis.modify(result=result)
        return portcullis.allow()

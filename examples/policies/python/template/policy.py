"""A Portcullis policy in Python: copy this folder, rename, edit, build.

    cp -r examples/policies/python/template my-policy
    examples/policies/build python my-policy -o my-policy.wasm
    portcullis plugin test my-policy.wasm --config my-policy/sidecar.toml --message call.json

What it does (replace with yours): refuses calls to the tools listed in `blocked`, and tags
every other tool call with `template.checked` for later stages.
"""

import portcullis
from portcullis import ConfigError, Message, Phase, Stage, Verdict


# componentize-py looks for a class named `Policy` in the module `policy`.
class Policy(portcullis.Policy):
    INFO = portcullis.info("template", "0.1.0", Stage.CUSTOM, [Phase.REQUEST])

    blocked: frozenset = frozenset()

    def init(self, config: dict) -> None:
        """The sidecar's [config] table. Raise ConfigError for a bad setting: the plugin then
        stays out of the chain and the message goes to the gateway's log."""
        portcullis.check_keys(config, "blocked")
        blocked = config.get("blocked", [])
        if not isinstance(blocked, list) or not all(isinstance(b, str) for b in blocked):
            raise ConfigError("blocked: expected a list of tool names")
        # Every evaluation runs in a fresh instance that starts here: keep state on the class.
        Policy.blocked = frozenset(blocked)

    def evaluate(self, msg: Message) -> Verdict:
        if msg.method() != "tools/call":
            return portcullis.allow()
        tool = msg.target() or ""
        if tool in Policy.blocked:
            portcullis.log_info(f"blocked a call to {tool}")
            return portcullis.deny(portcullis.DENIED, f"{tool} is disabled here")
        return portcullis.modify(attributes={"template.checked": "true"})

// A Portcullis policy in JavaScript: copy this folder, rename, edit, build.
//
//   cp -r examples/policies/js/template my-policy
//   examples/policies/build js my-policy -o my-policy.wasm
//   portcullis plugin test my-policy.wasm --config my-policy/sidecar.toml --message call.json
//
// What it does (replace with yours): refuses calls to the tools listed in `blocked`, and tags
// every other tool call with `template.checked` for later stages.

import { ConfigError, DENIED, allow, checkKeys, definePolicy, deny, log, modify } from "./portcullis.js";

// componentize-js checks this export against the `policy` interface of wit/policy.wit.
export const policy = definePolicy({
  describe: { name: "template", version: "0.1.0", stage: "custom", phases: ["request"] },

  // The sidecar's [config] table. Throw ConfigError for a bad setting: the plugin then stays
  // out of the chain and the message goes to the gateway's log. What it returns is what
  // `evaluate` gets. Every evaluation runs in a fresh instance that starts here.
  init(config) {
    checkKeys(config, "blocked");
    const blocked = config.blocked ?? [];
    if (!Array.isArray(blocked) || !blocked.every((b) => typeof b === "string")) {
      throw new ConfigError("blocked: expected a list of tool names");
    }
    return { blocked: new Set(blocked) };
  },

  evaluate({ blocked }, msg) {
    if (msg.method() !== "tools/call") return allow();
    const tool = msg.target() ?? "";
    if (blocked.has(tool)) {
      log.info(`blocked a call to ${tool}`);
      return deny(DENIED, `${tool} is disabled here`);
    }
    return modify({ attributes: { "template.checked": "true" } });
  },
});

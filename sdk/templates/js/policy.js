// {{name}}: a Portcullis policy in JavaScript.
//
// What it does (replace it with your rule): refuses any tool whose name contains one of the
// configured words (`delete` by default) unless the caller holds one of the configured roles
// (`admin` by default), and hides those tools from such a caller's `tools/list`.

import { ConfigError, DENIED, allow, checkKeys, definePolicy, deny, log, modify } from "portcullis-policy";

function strings(config, key, fallback) {
  const value = config[key] ?? fallback;
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string" && v !== "")) {
    throw new ConfigError(`${key}: expected a list of non-empty strings`);
  }
  return value;
}

// componentize-js checks this export against the `policy` interface of wit/policy.wit.
export const policy = definePolicy({
  describe: { name: "{{name}}", version: "0.1.0", stage: "authz", phases: ["request", "response"] },

  // The sidecar's [config] table. Throw ConfigError for a bad setting: the plugin then stays
  // out of the chain and the message goes to the gateway's log. What it returns is what
  // `evaluate` gets. Every evaluation runs in a fresh instance that starts here.
  init(config) {
    checkKeys(config, "words", "roles");
    return { words: strings(config, "words", ["delete"]), roles: strings(config, "roles", ["admin"]) };
  },

  evaluate({ words, roles }, msg) {
    const identity = msg.identity();
    if (identity && identity.roles.some((r) => roles.includes(r))) return allow();
    const guarded = (tool) => words.some((w) => tool.includes(w));
    if (msg.phase() === "request" && msg.method() === "tools/call") {
      const tool = msg.target() ?? "";
      if (!guarded(tool)) return allow();
      log.info(`refused ${tool}`);
      return deny(DENIED, `${tool} needs one of the roles ${JSON.stringify(roles)}`);
    }
    if (msg.phase() === "response" && msg.method() === "tools/list") {
      const text = msg.result();
      const result = text === undefined ? undefined : JSON.parse(text);
      const tools = result?.tools;
      if (!Array.isArray(tools)) return allow();
      const kept = tools.filter((t) => !(typeof t?.name === "string" && guarded(t.name)));
      if (kept.length === tools.length) return allow();
      return modify({ result: { ...result, tools: kept } });
    }
    return allow();
  },
});

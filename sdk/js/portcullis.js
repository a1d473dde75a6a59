// Thin helpers for writing Portcullis policies in JavaScript.
//
// The contract is `wit/policy.wit`, shipped in this package; `portcullis-policy build` runs
// componentize-js, which checks the policy's exports against it. This file only makes the raw bindings
// pleasant: verdict constructors, JSON parsing of the message's payloads, logging, and
// `definePolicy`, which turns `init`'s JSON into an object and a thrown error into the
// message the gateway logs. Its hooks have the WIT's names: `describe`, `init`, `evaluate`.
//
//   import { definePolicy, allow, deny, DENIED } from "portcullis-policy";
//
//   export const policy = definePolicy({
//     describe: { name: "block", version: "0.1.0", stage: "authz", phases: ["request"] },
//     init(config) { return { blocked: new Set(config.blocked ?? []) }; },
//     evaluate(settings, msg) {
//       return settings.blocked.has(msg.target()) ? deny(DENIED, "disabled") : allow();
//     },
//   });
//
// Shapes, as componentize-js maps WIT to JavaScript: enums are strings ("authz",
// "request"), an `option` is the value or `undefined`, a record is an object with camelCase
// fields, a `tuple` an array, and the `message` resource an object with methods
// (`msg.method()`, `msg.target()`, `msg.identity()`, `msg.params()`, `msg.argument(name)` …).

import { log as hostLog } from "portcullis:policy/host@0.1.0";

/** JSON-RPC error codes, as in the Rust SDK's `codes`. */
export const INVALID_REQUEST = -32600;
export const INVALID_PARAMS = -32602;
export const INTERNAL_ERROR = -32603;
export const DENIED = -32003;
export const UNAUTHENTICATED = -32004;

/** A bad setting. Its text goes to the gateway's log: name the setting and say why. */
export class ConfigError extends Error {}

/**
 * The `policy` export from a description:
 * - `describe`: `{ name, version, stage, phases }` (stage: "authn" | "authz" | "custom" |
 *   "routing" | "redaction"; phases: ["request"], ["response"] or both), or a function
 *   returning it;
 * - `init(config)`: checks the sidecar's `[config]` (a plain object) and returns the
 *   settings `evaluate` gets; throw `ConfigError` for a bad setting. Runs first in every
 *   instance: keep it quick. Optional: without it, any key in `[config]` is an error;
 * - `evaluate(settings, msg)`: returns `allow()`, `deny(...)` or `modify(...)`.
 */
export function definePolicy({ describe, init = (config) => (checkKeys(config), config), evaluate }) {
  if (describe === undefined || typeof evaluate !== "function") {
    throw new Error("definePolicy needs `describe` and `evaluate`");
  }
  let settings;
  const info = typeof describe === "function" ? describe : () => describe;
  return {
    describe: () => ({ phases: ["request"], ...info() }),
    init(json) {
      try {
        const config = JSON.parse(json);
        if (config === null || typeof config !== "object" || Array.isArray(config)) {
          throw new ConfigError("the configuration must be a table");
        }
        settings = init(config);
      } catch (e) {
        throw `invalid config: ${e instanceof Error ? e.message : e}`;
      }
    },
    evaluate: (msg) => evaluate(settings, msg),
  };
}

/** Let the message pass unchanged. */
export const allow = () => ({ tag: "allow" });

/**
 * Refuse the message: the client gets JSON-RPC error `code` with `message` (and `data`, any
 * JSON value). Never put secrets in either: clients and logs see them.
 */
export function deny(code, message, { data, httpStatus, httpHeaders = [] } = {}) {
  return {
    tag: "deny",
    val: {
      error: { code, message, data: data === undefined ? undefined : JSON.stringify(data) },
      httpStatus,
      httpHeaders,
    },
  };
}

/**
 * Let the message pass with changes; what is left out stays as it was. `params` and `result`
 * are JSON values, `attributes` an object of strings (facts for later stages).
 */
export function modify({ params, result, identity, upstream, target, attributes = {} } = {}) {
  const json = (v) => (v === undefined ? undefined : JSON.stringify(v));
  return {
    tag: "modify",
    val: {
      params: json(params),
      result: json(result),
      identity,
      upstream,
      target,
      attributes: Object.entries(attributes).map(([k, v]) => [k, String(v)]),
    },
  };
}

/** A copy of `identity` with attribute `key` set to `value` (replaced if present). */
export function withAttribute(identity, key, value) {
  const attributes = identity.attributes.some(([k]) => k === key)
    ? identity.attributes.map(([k, v]) => [k, k === key ? value : v])
    : [...identity.attributes, [key, value]];
  return { ...identity, attributes };
}

/** The request's params, parsed (`undefined` when it had none). */
export function params(msg) {
  const text = msg.params();
  return text === undefined ? undefined : JSON.parse(text);
}

/**
 * `params.arguments` of a `tools/call`, parsed; `undefined` when absent (a JSON `null`
 * argument list is `null`).
 */
export function args(msg) {
  const p = params(msg);
  return p !== null && typeof p === "object" && !Array.isArray(p) && Object.hasOwn(p, "arguments")
    ? p.arguments
    : undefined;
}

/**
 * Throws `ConfigError` for a key outside `known`: a typo in the sidecar is an error at load,
 * not a setting silently ignored.
 */
export function checkKeys(config, ...known) {
  for (const key of Object.keys(config)) {
    if (!known.includes(key)) {
      const expected = known.map((k) => `\`${k}\``).join(" or ") || "no settings";
      throw new ConfigError(`unknown field \`${key}\`, expected ${expected}`);
    }
  }
}

/** Lines in the gateway's log, tagged with the policy's name. */
export const log = {
  debug: (message) => hostLog("debug", message),
  info: (message) => hostLog("info", message),
  warn: (message) => hostLog("warn", message),
  error: (message) => hostLog("error", message),
};

// A legacy MCP client: the official TypeScript SDK's SSEClientTransport (HTTP+SSE, MCP
// 2024-11-05 transport), driven by the end-to-end tests (tests/e2e/legacy_sse.rs).
//
//   node client.cjs <sse-url> '<steps as JSON>'
//
// Steps: [{"op":"listTools"}, {"op":"callTool","name":"x","arguments":{}},
// {"op":"getPrompt","name":"x","arguments":{}}, {"op":"readResource","uri":"x"}]. Prints one
// JSON line per step, {"ok": result} or {"error": {"code", "message"}}, then exits 0; a
// failure to connect prints {"connectError": message} and exits 1.
//
// Resolved from tests/conformance/node_modules (NODE_PATH), where `npm ci` installs the SDK.
'use strict';
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { SSEClientTransport } = require('@modelcontextprotocol/sdk/client/sse.js');

async function step(client, s) {
    switch (s.op) {
        case 'listTools':
            return client.listTools();
        case 'callTool':
            return client.callTool({ name: s.name, arguments: s.arguments || {} });
        case 'getPrompt':
            return client.getPrompt({ name: s.name, arguments: s.arguments || {} });
        case 'readResource':
            return client.readResource({ uri: s.uri });
        default:
            throw new Error(`unknown step ${s.op}`);
    }
}

async function main() {
    const [url, steps] = process.argv.slice(2);
    const client = new Client({ name: 'legacy-sse-e2e', version: '1.0.0' });
    const transport = new SSEClientTransport(new URL(url));
    try {
        await client.connect(transport);
    } catch (e) {
        console.log(JSON.stringify({ connectError: String(e && e.message ? e.message : e) }));
        process.exit(1);
    }
    console.log(JSON.stringify({ connected: client.getServerVersion(), protocolVersion: transport._protocolVersion ?? null }));
    for (const s of JSON.parse(steps || '[]')) {
        try {
            console.log(JSON.stringify({ ok: await step(client, s) }));
        } catch (e) {
            console.log(JSON.stringify({ error: { code: e.code ?? null, message: String(e.message) } }));
        }
    }
    await client.close();
    process.exit(0);
}

main().catch(e => {
    console.error(e);
    process.exit(2);
});

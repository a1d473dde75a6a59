// An MCP client for the container test (scripts/container-test): the official TypeScript
// SDK's Client over its StreamableHTTPClientTransport, against the gateway in the container.
//
//   node client.cjs <mcp-url> <admin-key>
//
// As the demo admin (Authorization: Bearer <admin-key>) it lists the tools and calls one on
// each upstream: `demo__echo` (a stdio child inside the container) and `beta__echo` (an HTTP
// server on the host). As an anonymous guest it calls `demo__echo` and is refused
// `beta__echo` by the authz plugin. Prints what it saw as one JSON line; exits 1, saying why,
// when anything differs from that.
//
// Resolved from tests/conformance/node_modules (NODE_PATH), where `npm ci` installs the SDK.
'use strict';
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');

async function connect(url, headers) {
    const client = new Client({ name: 'portcullis-container-test', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
    await client.connect(transport);
    return client;
}

function text(result) {
    return (result.content || []).map((c) => c.text || '').join('');
}

async function main() {
    const [url, key] = process.argv.slice(2);
    if (!url || !key) throw new Error('usage: node client.cjs <mcp-url> <admin-key>');
    const seen = {};

    const admin = await connect(url, { Authorization: `Bearer ${key}` });
    seen.version = admin.getServerVersion();
    const tools = (await admin.listTools()).tools.map((t) => t.name).sort();
    seen.tools = tools;
    for (const name of ['demo__echo', 'beta__echo']) {
        if (!tools.includes(name)) throw new Error(`${name} missing from tools/list: ${tools.join(', ')}`);
    }
    const demo = await admin.callTool({ name: 'demo__echo', arguments: { text: 'from the container' } });
    seen.demoEcho = text(demo);
    if (demo.isError || !seen.demoEcho.includes('from the container')) {
        throw new Error(`demo__echo answered ${JSON.stringify(demo)}`);
    }
    const beta = await admin.callTool({ name: 'beta__echo', arguments: { text: 'through the host' } });
    seen.betaEcho = text(beta);
    if (beta.isError || !seen.betaEcho.includes('through the host')) {
        throw new Error(`beta__echo answered ${JSON.stringify(beta)}`);
    }
    await admin.close();

    const guest = await connect(url, {});
    const guestTools = (await guest.listTools()).tools.map((t) => t.name).sort();
    seen.guestTools = guestTools;
    if (guestTools.includes('beta__echo')) throw new Error(`a guest sees beta__echo: ${guestTools.join(', ')}`);
    const allowed = await guest.callTool({ name: 'demo__echo', arguments: { text: 'guest' } });
    if (allowed.isError || !text(allowed).includes('guest')) {
        throw new Error(`a guest's demo__echo answered ${JSON.stringify(allowed)}`);
    }
    let refused = null;
    try {
        const r = await guest.callTool({ name: 'beta__echo', arguments: { text: 'guest' } });
        refused = r.isError ? { isError: true, text: text(r) } : null;
    } catch (e) {
        refused = { code: e.code, message: String(e.message) };
    }
    if (!refused) throw new Error('a guest was allowed to call beta__echo');
    seen.guestRefused = refused;
    await guest.close();
    console.log(JSON.stringify(seen));
}

main().then(
    () => process.exit(0),
    (e) => {
        console.error(`container client: ${e && e.stack ? e.stack : e}`);
        process.exit(1);
    },
);

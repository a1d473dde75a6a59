// An MCP client over HTTPS: the official TypeScript SDK's StreamableHTTPClientTransport, its
// requests sent by undici with the test's CA, an optional client certificate, and HTTP/2
// offered by ALPN or not. Driven by the end-to-end tests (tests/e2e/tls.rs).
//
//   node client.cjs '<options as JSON>'
//
// Options: {"url", "ca": PEM, "cert": PEM?, "key": PEM?, "h2": bool, "tool": name,
// "arguments": {}, "headers": {}}. Prints one JSON line: {"tools": [names], "call": result,
// "logs": [the log notifications' data], "alpn": [the protocols the connections
// negotiated]} and exits 0, or {"error": message, "code": the HTTP status if the server
// answered} and exits 1.
//
// Resolved from tests/conformance/node_modules (NODE_PATH), where `npm ci` installs the SDK
// and undici.
'use strict';
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { LoggingMessageNotificationSchema } = require('@modelcontextprotocol/sdk/types.js');
const { Agent, buildConnector, fetch } = require('undici');

async function main() {
    const opts = JSON.parse(process.argv[2]);
    const tls = { ca: opts.ca, cert: opts.cert, key: opts.key };
    const connect = buildConnector({ ...tls, allowH2: !!opts.h2 });
    const alpn = [];
    // The connector reports which protocol each TLS connection agreed on.
    const recording = (options, callback) =>
        connect(options, (err, socket) => {
            if (!err) alpn.push(socket.alpnProtocol || null);
            callback(err, socket);
        });
    const dispatcher = new Agent({ connect: recording, allowH2: !!opts.h2 });
    const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
        fetch: (url, init) => fetch(url, { ...init, dispatcher }),
        requestInit: { headers: opts.headers || {} },
    });
    const client = new Client({ name: 'tls-e2e', version: '1.0.0' });
    const logs = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
        logs.push(n.params.data);
    });
    await client.connect(transport);
    const tools = (await client.listTools()).tools.map((t) => t.name);
    const call = await client.callTool({ name: opts.tool, arguments: opts.arguments || {} });
    await client.close();
    await dispatcher.close();
    process.stdout.write(JSON.stringify({ tools, call, logs, alpn }) + '\n');
}

main().catch((e) => {
    const code = e && typeof e.code === 'number' ? e.code : null;
    process.stdout.write(JSON.stringify({ error: String(e && (e.cause || e.message || e)), code }) + '\n');
    process.exit(1);
});

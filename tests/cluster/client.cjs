// One MCP session through the cluster test's load balancer (tests/e2e/cluster_clients.rs),
// driven by the official TypeScript SDK: its Client over its StreamableHTTPClientTransport.
//
//   node client.cjs <mcp-url>
//
// The test sends one JSON command a line on stdin; the script answers each with one JSON line
// on stdout (nothing else goes to stdout). Every reply carries `http`: every HTTP request the
// SDK sent so far, in order, with the JSON-RPC method(s) it carried, the session id header it
// sent, the status and the `x-served-by` header the balancer put on the answer (which replica
// served it). tests/cluster/client.py does the same with the Python SDK; the commands:
//
//   {"op":"connect"}                   initialize (the session-era handshake)
//   {"op":"sequence","n":N}            N times, one after the other: tools/list, then
//                                      tools/call alpha__whoami; each result names the replica
//                                      that served it and the replica whoami ran on
//   {"op":"burst","n":N}               N tools/call alpha__echo at once
//   {"op":"sleepers","n":N,"ms":MS}    starts N tools/call alpha__sleep at once; answers at once
//   {"op":"collect"}                   waits for them; a failed call is retried once, as is
//   {"op":"close"}                     DELETE the session, exit
//
// Resolved from tests/conformance/node_modules (NODE_PATH), where `npm ci` installs the SDK.
'use strict';
const readline = require('node:readline');
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');

const url = process.argv[2];
if (!url) throw new Error('usage: node client.cjs <mcp-url>');

const http = [];

function rpcOf(body) {
    if (typeof body !== 'string') return null;
    try {
        const msgs = [].concat(JSON.parse(body));
        return msgs.map((m) => m.method || 'response').join(',');
    } catch {
        return null;
    }
}

// The SDK's fetch, recording each request and who answered it.
async function recordingFetch(input, init) {
    const entry = {
        verb: (init && init.method) || 'GET',
        rpc: rpcOf(init && init.body),
        session: new Headers((init && init.headers) || {}).get('mcp-session-id'),
        status: null,
        server: null,
    };
    http.push(entry);
    try {
        const res = await fetch(input, init);
        entry.status = res.status;
        entry.server = res.headers.get('x-served-by');
        return res;
    } catch (e) {
        entry.error = String(e);
        throw e;
    }
}

function lastPost() {
    for (let i = http.length - 1; i >= 0; i--) if (http[i].verb === 'POST') return http[i];
    return {};
}

function failure(e) {
    return { ok: false, code: e.code === undefined ? null : e.code, error: String(e.message || e) };
}

const client = new Client({ name: 'portcullis-cluster-test', version: '1.0.0' });
const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch });
const TIMEOUT = { timeout: 120000 };
let pending = [];

async function call(name, args) {
    try {
        const r = await client.callTool({ name, arguments: args }, undefined, TIMEOUT);
        return { ok: !r.isError, text: (r.content || []).map((c) => c.text || '').join('') };
    } catch (e) {
        return failure(e);
    }
}

const ops = {
    async connect() {
        await client.connect(transport);
        return { sessionId: transport.sessionId, protocolVersion: transport.protocolVersion };
    },
    async sequence({ n }) {
        const results = [];
        for (let i = 0; i < n; i++) {
            try {
                const list = await client.listTools(undefined, TIMEOUT);
                results.push({
                    op: 'tools/list',
                    ok: list.tools.some((t) => t.name === 'alpha__whoami'),
                    server: lastPost().server,
                });
            } catch (e) {
                results.push({ op: 'tools/list', server: lastPost().server, ...failure(e) });
            }
            const r = await call('alpha__whoami', {});
            let replica = null;
            try {
                replica = JSON.parse(r.text).env.FIXTURE_PROBE;
            } catch {
                // not a whoami report: r says why
            }
            results.push({ op: 'tools/call', server: lastPost().server, replica, ...r });
        }
        return { results };
    },
    async burst({ n }) {
        const calls = [];
        for (let i = 0; i < n; i++) calls.push(call('alpha__echo', { text: `c${i}` }));
        return { results: await Promise.all(calls) };
    },
    async sleepers({ n, ms }) {
        pending = [];
        for (let i = 0; i < n; i++) pending.push({ ms, result: call('alpha__sleep', { ms }) });
        return { launched: n };
    },
    async collect() {
        const results = [];
        for (const p of pending) {
            const r = await p.result;
            if (!r.ok) r.retry = await call('alpha__sleep', { ms: p.ms });
            results.push(r);
        }
        pending = [];
        return { results };
    },
    async close() {
        await transport.terminateSession().catch(() => {});
        await client.close();
        return {};
    },
};

async function main() {
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
        if (!line.trim()) continue;
        const cmd = JSON.parse(line);
        let reply;
        try {
            reply = await ops[cmd.op](cmd);
        } catch (e) {
            reply = { failed: String((e && e.stack) || e) };
        }
        process.stdout.write(JSON.stringify({ op: cmd.op, ...reply, http }) + '\n');
        if (cmd.op === 'close') break;
    }
    process.exit(0);
}

main().catch((e) => {
    process.stderr.write(`${(e && e.stack) || e}\n`);
    process.exit(1);
});

// A legacy MCP server: the official TypeScript SDK's SSEServerTransport (HTTP+SSE, MCP
// 2024-11-05 transport) on plain node:http, put behind the gateway by the end-to-end tests
// (tests/e2e/legacy_sse.rs).
//
//   node server.cjs            # prints "listening on http://127.0.0.1:PORT/sse"
//
// GET /sse opens a session's stream; POST /messages?sessionId=… carries its messages; POST
// /sse gets 405, as a server that predates Streamable HTTP answers it. Tools: `add`, `echo`,
// and `whoami`, which answers with the headers of the POST that carried the call (so tests
// can see the gateway's configured credentials arrive).
//
// Resolved from tests/conformance/node_modules (NODE_PATH), where `npm ci` installs the SDK.
'use strict';
const http = require('node:http');
const { Server } = require('@modelcontextprotocol/sdk/server/index.js');
const { SSEServerTransport } = require('@modelcontextprotocol/sdk/server/sse.js');
const { ListToolsRequestSchema, CallToolRequestSchema } = require('@modelcontextprotocol/sdk/types.js');

const TOOLS = [
    {
        name: 'add',
        description: 'Adds two numbers',
        inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] },
    },
    {
        name: 'echo',
        description: 'Echoes its text',
        inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
    },
    {
        name: 'whoami',
        description: 'The headers of the request that carried this call',
        inputSchema: { type: 'object', properties: {} },
    },
];

function newServer() {
    const server = new Server({ name: 'legacy-sse-fixture', version: '1.0.0' }, { capabilities: { tools: {} } });
    server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
    server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
        const args = req.params.arguments || {};
        switch (req.params.name) {
            case 'add':
                return { content: [{ type: 'text', text: String(Number(args.a) + Number(args.b)) }] };
            case 'echo':
                return { content: [{ type: 'text', text: String(args.text) }] };
            case 'whoami':
                return { content: [{ type: 'text', text: JSON.stringify(extra.requestInfo?.headers ?? {}) }] };
            default:
                return { isError: true, content: [{ type: 'text', text: `unknown tool ${req.params.name}` }] };
        }
    });
    return server;
}

const transports = new Map();
let opened = 0;

const httpServer = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/sse' && req.method === 'GET') {
        const transport = new SSEServerTransport('/messages', res);
        transports.set(transport.sessionId, transport);
        opened += 1;
        console.log(`session opened ${transport.sessionId} (${opened} so far)`);
        res.on('close', () => {
            transports.delete(transport.sessionId);
            console.log(`session closed ${transport.sessionId}`);
        });
        await newServer().connect(transport);
        return;
    }
    if (url.pathname === '/messages' && req.method === 'POST') {
        const transport = transports.get(url.searchParams.get('sessionId'));
        if (!transport) {
            res.writeHead(404).end('unknown session');
            return;
        }
        await transport.handlePostMessage(req, res);
        return;
    }
    if (url.pathname === '/sse') {
        res.writeHead(405, { allow: 'GET' }).end('Method Not Allowed');
        return;
    }
    res.writeHead(404).end('Not Found');
});
httpServer.keepAliveTimeout = 60_000;
httpServer.on('connection', socket => socket.setNoDelay(true));
httpServer.listen(0, '127.0.0.1', () => {
    console.log(`listening on http://127.0.0.1:${httpServer.address().port}/sse`);
});

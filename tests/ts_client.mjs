// The official TypeScript MCP SDK 1.x client against a running mcpd (tests/test_ts_clients.py).
//
//   node tests/ts_client.mjs sse|streamable|websocket URL [PROTOCOL_VERSION]
//
// Connects with the SDK's Client over SSEClientTransport, StreamableHTTPClientTransport or
// WebSocketClientTransport, lists the tools, calls server.info and tests.progress (counting its
// progress notifications), and prints one JSON line with what it saw. Any failure, or no end
// within TIMEOUT_MS, exits non-zero with the reason on stderr. The SDK's Client always asks for
// its LATEST_PROTOCOL_VERSION; PROTOCOL_VERSION (say 2024-11-05) makes the wrapping transport
// below ask for that one instead, the SDK itself unchanged.
//
// The SDK is loaded from $MCPD_NODE_TOOLS/node_modules (default: the repo's .ci-tools/), where
// .ci/run installs it: this script lives outside that tree, so a bare import would not find it.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const TIMEOUT_MS = 20000;
const KINDS = ['sse', 'streamable', 'websocket'];

const [kind, url, requestedVersion] = process.argv.slice(2);
if (!KINDS.includes(kind) || !url) {
    process.stderr.write(`usage: node ts_client.mjs ${KINDS.join('|')} URL [PROTOCOL_VERSION]\n`);
    process.exit(2);
}

const timer = setTimeout(() => {
    process.stderr.write(`timed out after ${TIMEOUT_MS} ms\n`);
    process.exit(3);
}, TIMEOUT_MS);

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sdkRoot = path.join(process.env.MCPD_NODE_TOOLS || path.join(repo, '.ci-tools'), 'node_modules', '@modelcontextprotocol', 'sdk');
const load = module => import(pathToFileURL(path.join(sdkRoot, 'dist', 'esm', module)).href);

/** Delegates to the SDK transport and notes what only the wire shows: the negotiated version.
 * With `requestedVersion`, the initialize request asks for that version. */
class Recording {
    constructor(inner) {
        this.inner = inner;
        this.protocolVersion = null;
        this.received = 0;
    }
    async start() {
        this.inner.onmessage = (message, extra) => {
            this.received += 1;
            if (message?.result?.protocolVersion) this.protocolVersion = message.result.protocolVersion;
            this.onmessage?.(message, extra);
        };
        this.inner.onerror = error => this.onerror?.(error);
        this.inner.onclose = () => this.onclose?.();
        await this.inner.start();
    }
    send(message, options) {
        if (requestedVersion && message.method === 'initialize') {
            message = { ...message, params: { ...message.params, protocolVersion: requestedVersion } };
        }
        return this.inner.send(message, options);
    }
    close() {
        return this.inner.close();
    }
    get sessionId() {
        return this.inner.sessionId;
    }
    setProtocolVersion(version) {
        this.inner.setProtocolVersion?.(version);
    }
}

async function main() {
    const sdkVersion = JSON.parse(readFileSync(path.join(sdkRoot, 'package.json'), 'utf8')).version;
    const { Client } = await load('client/index.js');
    let inner;
    if (kind === 'sse') {
        const { SSEClientTransport } = await load('client/sse.js');
        inner = new SSEClientTransport(new URL(url));
    } else if (kind === 'streamable') {
        const { StreamableHTTPClientTransport } = await load('client/streamableHttp.js');
        inner = new StreamableHTTPClientTransport(new URL(url));
    } else {
        if (typeof WebSocket !== 'function') throw new Error(`no global WebSocket in Node ${process.version}`);
        const { WebSocketClientTransport } = await load('client/websocket.js');
        inner = new WebSocketClientTransport(new URL(url));
    }
    const transport = new Recording(inner);
    const client = new Client({ name: 'mcpd-ts-client-test', version: '1.0.0' });
    await client.connect(transport);

    const tools = (await client.listTools()).tools.map(tool => tool.name).sort();
    const info = await client.callTool({ name: 'server.info', arguments: {} });
    if (info.isError) throw new Error(`server.info failed: ${JSON.stringify(info)}`);

    const progress = [];
    const result = await client.callTool({ name: 'tests.progress', arguments: { steps: 3, delay: 0.02 } }, undefined, {
        onprogress: p => progress.push([p.progress, p.total ?? null, p.message ?? null])
    });

    const outcome = {
        transport: kind,
        sdkVersion,
        requestedVersion: requestedVersion ?? null,
        protocolVersion: transport.protocolVersion,
        serverVersion: client.getServerVersion() ?? null,
        sessionId: transport.sessionId ?? null,
        // The subprotocol the server chose (the SDK offers only "mcp").
        subprotocol: kind === 'websocket' ? (inner._socket?.protocol ?? null) : null,
        tools,
        info: info.structuredContent ?? null,
        progress,
        result: (result.content ?? []).filter(c => c.type === 'text').map(c => c.text),
        isError: result.isError ?? false
    };
    await client.close();
    process.stdout.write(JSON.stringify(outcome) + '\n');
}

main().then(
    () => {
        clearTimeout(timer);
        process.exit(0);
    },
    error => {
        process.stderr.write(`${error?.stack ?? error}\n`);
        process.exit(1);
    }
);

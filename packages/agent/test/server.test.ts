/**
 * AgentServer and AgentClient as a library, in-process, over real unix sockets: any store and any
 * root (the software root in development mode and under split knowledge, and a root that keeps its
 * KEKs inside itself), envelopes and streams through the client that a Keywarden in-process opens
 * (and the other way round), sealing, the version handshake, and who closes what.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  createDecryptStream,
  createEncryptStream,
  decryptEnvelope,
  encryptEnvelope,
  type KeyStore,
  KeywardenError,
  Keywarden,
  MemoryKeyStore,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
} from '@keywarden/core';
import { initSplitRoot } from '@keywarden/split-knowledge';
import { randomFillSync } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { MapKekRoot } from '../../testkit/test/_map-kek-root.js';
import { AgentClient } from '../src/client.js';
import { AgentServer } from '../src/server.js';

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()?.();
});

async function socketPath(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kw-agent-'));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  return path.join(dir, 'agent.sock');
}

async function serve(options: Omit<Parameters<typeof AgentServer.start>[0], 'socket'>): Promise<{
  server: AgentServer;
  client: AgentClient;
  socket: string;
  log: string[];
}> {
  const socket = await socketPath();
  const log: string[] = [];
  const server = await AgentServer.start({ socket, log: (l) => log.push(l), ...options });
  cleanup.push(() => server.close());
  const client = await AgentClient.connect(socket);
  cleanup.push(() => client.close());
  return { server, client, socket, log };
}

/** A development-mode root, unsealed; `unsealKey` is a copy of its key (the test wipes it). */
async function devRoot(store: KeyStore, keep?: { unsealKey?: Uint8Array }): Promise<SoftwareRoot> {
  const unsealKey = randomFillSync(new Uint8Array(UNSEAL_KEY_BYTES));
  if (keep) keep.unsealKey = unsealKey.slice();
  try {
    return await SoftwareRoot.initialize(store, { unsealKey });
  } finally {
    unsealKey.fill(0);
  }
}

const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

describe('AgentServer over any store and root', () => {
  it('a development-mode software root given as an object: envelopes through the client open with a Keywarden in-process, and back', async () => {
    const store = new MemoryKeyStore();
    const root = await devRoot(store);
    const { client, server } = await serve({ store, root });
    expect(client.protocolVersion).toBe(1);
    expect(server.isSealed()).toBe(false);
    await client.createKey('orders', { scope: { service: 'orders' } });
    const kw = new Keywarden({ store, root });
    cleanup.push(() => kw.close());

    const context = { tenant: 'acme' };
    const plaintext = new TextEncoder().encode('order #1');
    const viaAgent = await encryptEnvelope(client, plaintext, { key: 'orders', context });
    expect(new TextDecoder().decode(await decryptEnvelope(kw, viaAgent, { key: 'orders', context }))).toBe('order #1');
    const local = await encryptEnvelope(kw, plaintext, { key: 'orders', context });
    expect(new TextDecoder().decode(await decryptEnvelope(client, local, { key: 'orders', context }))).toBe('order #1');

    // The expected key crosses the socket: an envelope under another key is refused, not opened.
    await client.createKey('payroll');
    const other = await encryptEnvelope(client, plaintext, { key: 'payroll', context });
    const refused = await failure(decryptEnvelope(client, other, { key: 'orders', context }));
    expect(KeywardenError.isInstance(refused, 'KW_UNEXPECTED_KEY')).toBe(true);
    const wrongContext = await failure(decryptEnvelope(client, viaAgent, { key: 'orders', context: { tenant: 'x' } }));
    expect(KeywardenError.isInstance(wrongContext, 'KW_DECRYPT')).toBe(true);

    // Streams in both directions, with pipeline.
    const big = new Uint8Array(200_000).map((_, i) => i % 251);
    const sealed = await collect(
      Readable.from([big]).pipe(createEncryptStream(client, { key: 'orders', context, frameSize: 16 * 1024 })),
    );
    const out: Buffer[] = [];
    await pipeline(Readable.from([sealed]), createDecryptStream(kw, { key: 'orders', context }), async (src) => {
      for await (const c of src) out.push(Buffer.from(c as Uint8Array));
    });
    expect(Buffer.concat(out).equals(Buffer.from(big))).toBe(true);

    expect((await client.listKeys()).map((k) => k.name).sort()).toEqual(['orders', 'payroll']);
    expect((await client.rotateKey('orders')).primaryVersion).toBe(2);
    expect((await client.getKey('orders')).scope).toEqual({ service: 'orders' });

    // Not split knowledge: no shares to take.
    const st = await client.status();
    expect(st).toMatchObject({ sealed: false, rootId: root.describe().id, threshold: 0, shareSetId: '' });
    expect(await client.unseal('kwshare1.x')).toMatchObject({ alreadyUnsealed: true });
  });

  it('a root that keeps its KEKs inside itself (not the software root): data keys through the agent; seal refuses key operations; shares are not its unseal method', async () => {
    const store = new MemoryKeyStore();
    const { root } = await MapKekRoot.create(store, new TextEncoder().encode('1234-pin'));
    const { client, log } = await serve({ store, root, ownsRoot: true });
    const info = await client.createKey('in-root');
    expect(info.versions[0]?.rootId).toBe(root.describe().id);
    const env = await encryptEnvelope(client, new Uint8Array([1, 2, 3]), { key: 'in-root' });
    expect([...(await decryptEnvelope(client, env, { key: 'in-root' }))]).toEqual([1, 2, 3]);

    await client.seal();
    expect(root.isSealed()).toBe(true);
    expect(log).toContain('sealed: the root and the KEK cache were wiped');
    const sealed = await failure(client.generateDataKey('in-root'));
    expect(KeywardenError.isInstance(sealed, 'KW_KEYSTORE_SEALED')).toBe(true);
    expect((sealed as Error).message).toBe(
      'keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares)',
    );
    const unseal = await failure(client.unseal('kwshare1.x'));
    expect(KeywardenError.isInstance(unseal, 'KW_UNSUPPORTED')).toBe(true);
    expect((unseal as Error).message).toBe(
      'agent: the map-kek root this agent serves is not unsealed by a quorum of shares',
    );
    // Metadata is served sealed.
    expect((await client.getKey('in-root')).name).toBe('in-root');
  });

  it('split knowledge: starts sealed, a quorum given one share at a time unseals it; seal wipes it and reloads the root through the factory', async () => {
    const store = new MemoryKeyStore();
    const { root: first, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
    await first.close();
    let loads = 0;
    const { client, server, log } = await serve({
      store,
      root: async (s) => {
        loads++;
        return SoftwareRoot.load(s);
      },
    });
    expect(server.isSealed()).toBe(true);
    expect(server.describeSealed()).toMatch(/^2 of 3 shares of share set ss_/);
    const sealed = await failure(client.generateDataKey('k'));
    expect(KeywardenError.isInstance(sealed, 'KW_KEYSTORE_SEALED')).toBe(true);

    expect(await client.unseal(handOut[2] as string)).toMatchObject({ sealed: true, accepted: 1, indices: [3] });
    const dup = await failure(client.unseal(handOut[2] as string));
    expect(KeywardenError.isInstance(dup, 'KW_SHARE')).toBe(true);
    expect(await client.unseal(handOut[0] as string)).toMatchObject({ sealed: false, accepted: 2 });
    expect(log).toContain('unsealed');
    expect(log.join('\n')).not.toContain((handOut[0] as string).slice(20));

    await client.createKey('k');
    const env = await encryptEnvelope(client, new Uint8Array([9]), { key: 'k' });
    await client.seal();
    expect(loads).toBe(2); // loaded again: a rekey or root rotation would be picked up here
    expect(server.isSealed()).toBe(true);
    const refused = await failure(decryptEnvelope(client, env, { key: 'k' }));
    expect(KeywardenError.isInstance(refused, 'KW_KEYSTORE_SEALED')).toBe(true);
    await client.unseal(handOut[1] as string);
    await client.unseal(handOut[2] as string);
    expect([...(await decryptEnvelope(client, env, { key: 'k' }))]).toEqual([9]);
  });
});

describe('the version handshake', () => {
  it('an agent answers a hello it shares no version with by KW_AGENT_VERSION and goes on serving the connection', async () => {
    const store = new MemoryKeyStore();
    const { socket } = await serve({ store, root: await devRoot(store) });
    const { createConnection } = await import('node:net');
    const conn = createConnection({ path: socket });
    cleanup.push(async () => conn.destroy());
    const lines: string[] = [];
    let buf = '';
    conn.on('data', (d) => {
      buf += d.toString('utf8');
      let nl = buf.indexOf('\n');
      while (nl >= 0) {
        lines.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        nl = buf.indexOf('\n');
      }
    });
    conn.write('{"id":1,"op":"hello","args":{"versions":[2]}}\n{"id":2,"op":"hello","args":{"versions":[1,2]}}\n');
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (lines.length >= 2) {
          clearInterval(t);
          resolve();
        }
      }, 5);
    });
    expect(JSON.parse(lines[0] as string)).toEqual({
      id: 1,
      ok: false,
      error: {
        code: 'KW_AGENT_VERSION',
        message:
          'agent: protocol version mismatch: the client speaks version 2, this agent speaks version 1; use matching releases of @keywarden/agent',
      },
    });
    expect(JSON.parse(lines[1] as string)).toEqual({
      id: 2,
      ok: true,
      result: { protocol: 1, server: 'keywarden-agent' },
    });
  });

  it.each([
    [
      'chooses a version the client does not speak',
      '{"protocol":2,"server":"x"}',
      /chose protocol version 2, which this client does not speak/,
    ],
    ['predates versioning (hello is an unknown op)', null, /does not negotiate a protocol version/],
  ])('a client meeting an agent that %s fails with AgentVersionError', async (_what, result, message) => {
    // A peer speaking the wire format by hand: only what a real agent of another version would say.
    const socket = await socketPath();
    const peer = createServer((c) => {
      c.on('data', (d) => {
        const id = JSON.parse(d.toString('utf8').split('\n')[0] as string).id;
        c.write(
          result === null
            ? `{"id":${id},"ok":false,"error":{"code":"KW_AGENT_PROTOCOL","message":"agent: unknown op (expected one of status)"}}\n`
            : `{"id":${id},"ok":true,"result":${result}}\n`,
        );
      });
    });
    await new Promise<void>((resolve) => peer.listen(socket, resolve));
    cleanup.push(() => new Promise((resolve) => peer.close(resolve)));
    const err = await failure(AgentClient.connect(socket));
    expect(KeywardenError.isInstance(err, 'KW_AGENT_VERSION')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});

describe('start, close and ownership', () => {
  it('close() closes only what the server owns: a store passed in stays open; roots from a factory are closed', async () => {
    const store = new MemoryKeyStore();
    const keep: { unsealKey?: Uint8Array } = {};
    const root = await devRoot(store, keep);
    const { server, client } = await serve({ store, root });
    await client.createKey('kept');
    await server.close();
    expect(root.isSealed()).toBe(false); // the caller's root: the caller closes it
    expect((await store.getKey('kept'))?.name).toBe('kept'); // the caller's store: still open
    await root.close();

    const loaded: SoftwareRoot[] = [];
    const owned = await serve({
      store,
      root: async (s) => {
        const r = await SoftwareRoot.load(s);
        await r.unseal(keep.unsealKey as Uint8Array);
        loaded.push(r);
        return r;
      },
    });
    keep.unsealKey?.fill(0);
    expect((await owned.client.getKey('kept')).name).toBe('kept');
    await owned.server.close();
    expect(loaded[0]?.isSealed()).toBe(true);
    const closed = await failure(loaded[0]?.unwrapKey(new Uint8Array(64), new Uint8Array(0)) as Promise<unknown>);
    expect(KeywardenError.isInstance(closed, 'KW_CLOSED')).toBe(true);
    const gone = await failure(owned.client.listKeys());
    expect(KeywardenError.isInstance(gone)).toBe(true);
  });

  it('start refuses a path that is not a socket and a live agent; a stale socket file is replaced', async () => {
    const store = new MemoryKeyStore();
    const root = await devRoot(store);
    const socket = await socketPath();
    await writeFile(socket, 'not a socket');
    const notSocket = await failure(AgentServer.start({ socket, store, root }));
    expect(KeywardenError.isInstance(notSocket, 'KW_AGENT')).toBe(true);
    expect((notSocket as Error).message).toBe(`agent: ${socket} exists and is not a socket; refusing to replace it`);
    await rm(socket);

    const first = await AgentServer.start({ socket, store, root });
    cleanup.push(() => first.close());
    const second = await failure(AgentServer.start({ socket, store, root }));
    expect((second as Error).message).toBe(`agent: another agent is already running on ${socket}`);
    const none = await failure(AgentClient.connect(path.join(path.dirname(socket), 'none.sock')));
    expect(KeywardenError.isInstance(none, 'KW_AGENT_UNAVAILABLE')).toBe(true);
  });
});

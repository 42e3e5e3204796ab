import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomListenPort, startOpensslServer } from '../src/openssl-server.js';
import { makePki, type TestPki } from '../src/tls-certs.js';

describe('startOpensslServer', () => {
  let pki: TestPki;
  let busy: Server;
  let busyPort: number;

  beforeAll(async () => {
    pki = makePki();
    busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    busyPort = (busy.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise((r) => busy.close(r));
    pki?.remove();
  });

  const args = (port: number) => [
    's_server',
    '-cert',
    pki.server.certFile,
    '-key',
    pki.server.keyFile,
    '-accept',
    `127.0.0.1:${port}`,
    '-naccept',
    '1',
  ];

  it('a port someone else holds: s_server is started again on another one', async () => {
    const s = await startOpensslServer(args, { ports: [busyPort] });
    try {
      expect(s.port).not.toBe(busyPort);
      expect(s.output()).toMatch(/ACCEPT/);
    } finally {
      s.child.kill('SIGKILL');
    }
  });

  it('any other failure is not retried: it rejects at once with what openssl printed', async () => {
    await expect(startOpensslServer((port) => [...args(port), '-no-such-option'], { attempts: 5 })).rejects.toThrow(
      /openssl exited \(\d+\): .*no-such-option/s,
    );
  });

  it('ports are drawn below the ephemeral range, where closed connections leave no TIME_WAIT (s_server binds without SO_REUSEADDR)', () => {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    for (let i = 0; i < 200; i++) {
      const p = randomListenPort();
      expect(p).toBeGreaterThanOrEqual(10_000);
      expect(p).toBeLessThan(low);
    }
  });

  it('only so many tries', async () => {
    await expect(startOpensslServer(args, { ports: [busyPort, busyPort], attempts: 2 })).rejects.toThrow(
      /Address already in use/,
    );
  });
});

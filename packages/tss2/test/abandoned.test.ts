/**
 * A command abandoned at its deadline keeps running on its native worker thread. When it answers,
 * the handles it made are flushed, and those flushes are waited for however long the TPM takes:
 * the ESAPI context is released only when no native call on it is left (releasing it under a
 * running call is a use-after-free; giving up on a flush leaves the object loaded in a TPM that
 * has no resource manager).
 *
 * A TCP relay in front of the suite's swtpm holds chosen commands (by command code) to make a
 * TPM that answers late, on cue.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Esys, ESYS_TR, storagePrimaryTemplate } from '../src/index.js';

const tcti = process.env.KEYWARDEN_TPM_TCTI as string;
const TPM2_CC_CREATE_PRIMARY = 0x131;
const TPM2_CC_FLUSH_CONTEXT = 0x165;

/** A relay on two consecutive loopback ports (command, control) in front of swtpm's; commands
 * whose code is in `hold` wait until `release(code)`. */
class Relay {
  readonly #servers: Server[] = [];
  readonly #held = new Map<number, Array<() => void>>();
  readonly hold = new Set<number>();
  readonly seen: number[] = [];
  port = 0;

  async start(target: { host: string; port: number }): Promise<void> {
    for (let tries = 0; tries < 50 && !this.port; tries++) {
      const p = 20000 + Math.floor(Math.random() * 40000);
      try {
        this.#servers.push(await this.#listen(p, target.port, true));
        this.#servers.push(await this.#listen(p + 1, target.port + 1, false));
        this.port = p;
      } catch {
        for (const s of this.#servers.splice(0)) s.close();
      }
    }
    if (!this.port) throw new Error('no two free consecutive loopback ports');
  }

  release(code: number): void {
    this.hold.delete(code);
    for (const go of this.#held.get(code) ?? []) go();
    this.#held.delete(code);
  }

  async close(): Promise<void> {
    for (const code of [...this.hold]) this.release(code);
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }

  #listen(port: number, to: number, commands: boolean): Promise<Server> {
    return new Promise((resolve, reject) => {
      const server = createServer((client: Socket) => {
        const tpm = connect(to, '127.0.0.1');
        tpm.pipe(client);
        client.on('error', () => tpm.destroy());
        tpm.on('error', () => client.destroy());
        if (!commands) {
          client.pipe(tpm);
          return;
        }
        // Commands: forward each whole command, or hold it while its code is held.
        let buf = Buffer.alloc(0);
        let waiting = false;
        const pump = (): void => {
          while (!waiting && buf.length >= 10) {
            const size = buf.readUInt32BE(2);
            if (buf.length < size) return;
            const code = buf.readUInt32BE(6);
            const cmd = buf.subarray(0, size);
            buf = buf.subarray(size);
            this.seen.push(code);
            if (this.hold.has(code)) {
              waiting = true;
              const list = this.#held.get(code) ?? [];
              list.push(() => {
                tpm.write(cmd);
                waiting = false;
                pump();
              });
              this.#held.set(code, list);
            } else {
              tpm.write(cmd);
            }
          }
        };
        client.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          pump();
        });
        client.on('end', () => tpm.end());
      });
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve(server));
    });
  }
}

const until = async (what: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await what())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('a command abandoned at its deadline', () => {
  let relay: Relay | undefined;
  afterEach(async () => {
    await relay?.close();
    relay = undefined;
  });

  it('answers late: its object is flushed, a flush slower than the deadline is waited for, and the context is released only after every native call returned', async () => {
    relay = new Relay();
    await relay.start({ host: '127.0.0.1', port: Number(/port=(\d+)/.exec(tcti)?.[1]) });
    const handles = async (): Promise<number[]> => {
      const check = await Esys.open({ tcti });
      try {
        return await check.transientHandles();
      } finally {
        await check.close();
      }
    };
    const before = await handles();

    const esys = await Esys.open({ tcti: `swtpm:host=127.0.0.1,port=${relay.port}`, timeoutMs: 300 });
    relay.hold.add(TPM2_CC_CREATE_PRIMARY);
    relay.hold.add(TPM2_CC_FLUSH_CONTEXT);
    await expect(esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'))).rejects.toMatchObject({
      code: 'KW_ROOT_UNAVAILABLE',
      message: expect.stringMatching(/^TPM2_CreatePrimary: the TPM did not answer within 300 ms/),
    });
    expect(esys.broken).toBe(true);
    await esys.close(); // returns at once; the running command keeps the context
    expect(esys.stats()).toMatchObject({ nativeCalls: 1, released: false });

    // The TPM answers: the new primary is loaded, and its flush is sent and held.
    relay.release(TPM2_CC_CREATE_PRIMARY);
    await until(() => relay?.seen.includes(TPM2_CC_FLUSH_CONTEXT) ?? false);
    // Held for three deadlines: still waited for, the context still kept.
    await new Promise((r) => setTimeout(r, 900));
    expect(esys.stats()).toMatchObject({ nativeCalls: 1, released: false });

    relay.release(TPM2_CC_FLUSH_CONTEXT);
    await until(() => esys.stats().released);
    expect(esys.stats()).toMatchObject({ nativeCalls: 0, liveHandles: 0, liveBuffers: 0 });
    expect(await handles()).toEqual(before);
  });
});

/**
 * The TPM benchmarks' TPM: a swtpm started with the project's harness script (harness/swtpm.sh),
 * whatever the environment says, and stopped when the benchmark ends; plus a raw ESAPI client on it
 * (koffi straight onto libtss2-esys, synchronous calls, password sessions, no wrapper of ours): the
 * ceiling the TPM rows are measured against, unsealing the same kind of object.
 */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../harness/swtpm.sh', import.meta.url));

export interface BenchTpm {
  tcti: string;
  stop(): void;
}

export function startTpm(): BenchTpm {
  const out = execFileSync('bash', [SCRIPT, 'start'], { encoding: 'utf8', timeout: 60_000 });
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='?([^']*)'?$/.exec(line);
    if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
  }
  const pid = env.KEYWARDEN_SWTPM_PID as string;
  const dir = env.KEYWARDEN_SWTPM_DIR as string;
  return {
    tcti: env.KEYWARDEN_TPM_TCTI as string,
    stop: () => {
      execFileSync('bash', [SCRIPT, 'stop', pid, dir], { timeout: 30_000 });
    },
  };
}

type Native = ((...a: unknown[]) => number) & { async: (...a: unknown[]) => void };
interface Lib {
  func(decl: string): Native;
}

const NONE = 0xfff;
const PASSWORD = 0x0ff;

/** Load + Unseal + FlushContext of one sealed object in plain ESAPI, synchronously. */
export class RawEsys {
  readonly #f: Record<string, Native> = {};
  readonly #ctx: unknown;
  readonly #tcti: unknown;
  readonly #primary: number;
  readonly #cbuf = (n: number) => Buffer.alloc(n);

  /** `primaryHandle`: a persistent storage key (the benchmarks keep every parent persistent: swtpm
   * has 3 transient object slots, and TPM2_Create needs one free). */
  constructor(tcti: string, primaryHandle: number) {
    const koffi = createRequire(import.meta.url)('koffi') as { load(p: string): Lib };
    const esys = koffi.load('libtss2-esys.so.0');
    const mu = koffi.load('libtss2-mu.so.0');
    const ldr = koffi.load('libtss2-tctildr.so.0');
    const S = 'uint32_t s1, uint32_t s2, uint32_t s3';
    const decl: Record<string, [Lib, string]> = {
      tcti: [ldr, 'uint32_t Tss2_TctiLdr_Initialize(const char *conf, _Out_ void **ctx)'],
      tctiFin: [ldr, 'void Tss2_TctiLdr_Finalize(_Inout_ void **ctx)'],
      init: [esys, 'uint32_t Esys_Initialize(_Out_ void **ctx, void *tcti, void *abi)'],
      fin: [esys, 'void Esys_Finalize(_Inout_ void **ctx)'],
      free: [esys, 'void Esys_Free(void *p)'],
      fromPublic: [esys, `uint32_t Esys_TR_FromTPMPublic(void *ctx, uint32_t handle, ${S}, _Out_ uint32_t *tr)`],
      load: [
        esys,
        `uint32_t Esys_Load(void *ctx, uint32_t parent, ${S}, const void *priv, const void *pub, _Out_ uint32_t *h)`,
      ],
      unseal: [esys, `uint32_t Esys_Unseal(void *ctx, uint32_t item, ${S}, _Out_ void **data)`],
      flush: [esys, 'uint32_t Esys_FlushContext(void *ctx, uint32_t h)'],
      pubU: [mu, 'uint32_t Tss2_MU_TPM2B_PUBLIC_Unmarshal(const void *b, size_t n, _Inout_ size_t *o, void *d)'],
      privU: [mu, 'uint32_t Tss2_MU_TPM2B_PRIVATE_Unmarshal(const void *b, size_t n, _Inout_ size_t *o, void *d)'],
    };
    for (const [k, [lib, d]] of Object.entries(decl)) this.#f[k] = lib.func(d);
    const f = this.#f as Record<string, Native>;
    const t: unknown[] = [null];
    if (f.tcti?.(tcti, t) !== 0) throw new Error('bench: raw ESAPI cannot reach the TPM');
    this.#tcti = t[0];
    const c: unknown[] = [null];
    if (f.init?.(c, t[0], null) !== 0) throw new Error('bench: Esys_Initialize failed');
    this.#ctx = c[0];
    const h = [0];
    const rc = f.fromPublic?.(this.#ctx, primaryHandle, NONE, NONE, NONE, h);
    if (rc !== 0) throw new Error(`bench: Esys_TR_FromTPMPublic 0x${rc?.toString(16)}`);
    this.#primary = h[0] as number;
  }

  #u(name: string, wire: Uint8Array, size: number): Buffer {
    const d = this.#cbuf(size);
    const rc = this.#f[name]?.(wire, wire.length, [0], d);
    if (rc !== 0) throw new Error(`bench: ${name} 0x${rc?.toString(16)}`);
    return d;
  }

  /** C structures for an object's TPM2B_PRIVATE and TPM2B_PUBLIC (wire form in). */
  prepare(outPrivate: Uint8Array, outPublic: Uint8Array): { priv: Buffer; pub: Buffer } {
    return { priv: this.#u('privU', outPrivate, 1552), pub: this.#u('pubU', outPublic, 616) };
  }

  /** One Load + Unseal + FlushContext (password sessions, empty auth). */
  cycle(o: { priv: Buffer; pub: Buffer }): void {
    const f = this.#f;
    const h = [0];
    if (f.load?.(this.#ctx, this.#primary, PASSWORD, NONE, NONE, o.priv, o.pub, h) !== 0) {
      throw new Error('bench: raw Esys_Load failed');
    }
    const d: unknown[] = [null];
    const rc = f.unseal?.(this.#ctx, h[0], PASSWORD, NONE, NONE, d);
    if (d[0]) f.free?.(d[0]);
    f.flush?.(this.#ctx, h[0]);
    if (rc !== 0) throw new Error('bench: raw Esys_Unseal failed');
  }

  close(): void {
    this.#f.fin?.([this.#ctx]);
    this.#f.tctiFin?.([this.#tcti]);
  }
}

/** Persistent handles the benchmarks use on their private swtpm. */
export const BENCH_PRIMARY_HANDLE = 0x81000a01;
export const BENCH_ROOT_HANDLE = 0x81000a02;

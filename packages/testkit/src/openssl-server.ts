/**
 * `openssl s_server` on a random loopback port for the TLS interop suites (PKCS#11 engine, TPM
 * provider). s_server binds without SO_REUSEADDR, so a port that a closed connection left in
 * TIME_WAIT refuses it; the test suites leave thousands (swtpm's TCTI connects once per command),
 * mostly on the kernel's ephemeral ports. So the port is drawn below the ephemeral range, and a
 * server that still cannot bind is started again on a new port, a few times.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** A random port below the kernel's ephemeral range (net.ipv4.ip_local_port_range), else in 20000..59999. */
export function randomListenPort(): number {
  let low = 0;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  } catch {
    // not Linux: any port in the usual range
  }
  return Number.isInteger(low) && low > 12_000 ? randomInt(10_000, low) : randomInt(20_000, 60_000);
}

export interface OpensslServer {
  child: ChildProcess;
  port: number;
  /** Everything it printed on stdout and stderr so far (it tells why a handshake failed). */
  output(): string;
}

/** Start `openssl` with `argsFor(port)` and wait until it prints `ready` (s_server: ACCEPT). */
export async function startOpensslServer(
  argsFor: (port: number) => string[],
  options: {
    env?: NodeJS.ProcessEnv;
    ready?: RegExp;
    timeoutMs?: number;
    attempts?: number;
    /** Ports to try first, in order (then random ones). */
    ports?: number[];
  } = {},
): Promise<OpensslServer> {
  const attempts = options.attempts ?? 5;
  for (let attempt = 1; ; attempt++) {
    const port = options.ports?.[attempt - 1] ?? randomListenPort();
    const child = spawn('openssl', argsFor(port), {
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let seen = '';
    const keep = (chunk: Buffer) => {
      seen += chunk.toString('utf8');
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    try {
      await waitFor(child, () => seen, options.ready ?? /ACCEPT/, options.timeoutMs ?? 20_000);
      return { child, port, output: () => seen };
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      if (attempt >= attempts || !/Address already in use/.test(seen)) throw err;
    }
  }
}

/** Resolve once the output matches `re`; reject when the child exits first or after `ms`. */
function waitFor(child: ChildProcess, seen: () => string, re: RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      child.stdout?.off('data', check);
      child.stderr?.off('data', check);
      child.off('exit', exited);
      if (err) reject(err);
      else resolve();
    };
    const check = () => {
      if (re.test(seen())) done();
    };
    const exited = (code: number | null) => done(new Error(`openssl exited (${code}): ${seen()}`));
    const timer = setTimeout(() => done(new Error(`openssl did not start within ${ms} ms: ${seen()}`)), ms);
    child.stdout?.on('data', check);
    child.stderr?.on('data', check);
    child.on('exit', exited);
    check();
  });
}

/** The tail of an `s_server` that takes one TLS 1.3 handshake on 127.0.0.1:`port` with `certPath`. */
export function oneHandshakeServerArgs(port: number, certPath: string): string[] {
  return ['-cert', certPath, '-accept', `127.0.0.1:${port}`, '-naccept', '1', '-tls1_3'];
}

/** `openssl s_client` against 127.0.0.1:`port`, verifying the server for "localhost" under `caPath`. */
export function tlsClientHandshake(port: number, caPath: string): { status: number; output: string } {
  const r = spawnSync(
    'openssl',
    [
      's_client',
      '-connect',
      `127.0.0.1:${port}`,
      '-CAfile',
      caPath,
      '-verify_return_error',
      '-verify_hostname',
      'localhost',
      '-brief',
    ],
    { encoding: 'utf8', timeout: 30_000, input: '' },
  );
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/**
 * Starts an isolated SoftHSM2 for the run (harness/softhsm.sh) unless the environment already
 * names one, and stops it after. Outside CI, a machine without SoftHSM2 gets the reason in
 * KEYWARDEN_PKCS11_UNAVAILABLE and the suites say it; in CI (process.env.CI) it is a failure.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../../../harness/softhsm.sh', import.meta.url));

export default function setup(): (() => void) | undefined {
  if (process.env.KEYWARDEN_PKCS11_MODULE && process.env.KEYWARDEN_PKCS11_PIN_FILE) {
    // turbo passes KEYWARDEN_* through, not SOFTHSM2_CONF: the harness exports both.
    if (!process.env.SOFTHSM2_CONF && process.env.KEYWARDEN_SOFTHSM2_CONF) {
      process.env.SOFTHSM2_CONF = process.env.KEYWARDEN_SOFTHSM2_CONF;
    }
    return undefined;
  }
  let out: string;
  try {
    out = execFileSync('bash', [script, 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
  } catch (err) {
    const reason = `SoftHSM2 could not be started by harness/softhsm.sh: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(reason);
    process.env.KEYWARDEN_PKCS11_UNAVAILABLE = reason;
    return undefined;
  }
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
    if (m?.[1] && m[2] !== undefined) process.env[m[1]] = m[2];
  }
  const dir = process.env.KEYWARDEN_SOFTHSM_DIR as string;
  return () => {
    execFileSync('bash', [script, 'stop', dir], { stdio: 'ignore', timeout: 30_000 });
  };
}

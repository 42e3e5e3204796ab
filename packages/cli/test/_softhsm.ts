/**
 * A SoftHSM2 token for the CLI's device suites that need one of their own: started by
 * harness/softhsm.sh in a temporary folder and stopped by stopSoftHsm. In CI a token that cannot
 * be made fails the suite; elsewhere the suite skips with the harness's reason (`reason`).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SOFTHSM_SH = fileURLToPath(new URL('../../../harness/softhsm.sh', import.meta.url));

/** The harness's exports (SOFTHSM2_CONF, KEYWARDEN_PKCS11_MODULE, _TOKEN, _PIN_FILE …) and its folder. */
export type HarnessSoftHsm = { env: Record<string, string>; dir: string } | { reason: string };

export function startSoftHsm(): HarnessSoftHsm {
  try {
    const out = execFileSync('bash', [SOFTHSM_SH, 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
    const env: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
      if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
    }
    return { env, dir: env.KEYWARDEN_SOFTHSM_DIR as string };
  } catch (err) {
    const reason = `harness/softhsm.sh could not start its token: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(reason);
    return { reason };
  }
}

export function stopSoftHsm(hsm: HarnessSoftHsm): void {
  if ('dir' in hsm) execFileSync('bash', [SOFTHSM_SH, 'stop', hsm.dir], { stdio: 'ignore', timeout: 30_000 });
}

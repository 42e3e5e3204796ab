#!/usr/bin/env node
// Is SoftHSM2's C_SetPIN crash-safe? (docs/split-knowledge.md §11, docs/pkcs11.md "The user PIN")
//
//   node harness/softhsm-setpin-kill.mjs [ROUNDS]      (default 60; needs softhsm2, opensc, pkcs11js)
//
// Starts its own token (harness/softhsm.sh), then ROUNDS times: a child process logs in and calls
// C_SetPIN (pkcs11js directly: no Keywarden code), and is SIGKILLed 0..3 ms after its C_Login
// returned; OpenSC's pkcs11-tool then asks whether the token takes the old or the new PIN. It stops
// at the first round where it takes neither, and prints one JSON line. Measured with SoftHSM2
// 2.6.1: the token is left uninitialized (token.object empty) when the kill lands inside C_SetPIN:
// ObjectFile::store() opens the token's file truncated and writes it attribute by attribute, so a
// process killed in between leaves nothing. A device's own PIN change must be atomic for a crash
// there to be survivable; no caller can make it so.
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../packages/pkcs11/package.json'));
const pkcs11jsPath = require.resolve('pkcs11js');
const rounds = Number(process.argv[2] ?? 60);
const env = {};
for (const line of execFileSync('bash', [path.join(here, 'softhsm.sh'), 'start'], { encoding: 'utf8' }).split('\n')) {
  const m = /^export ([A-Z0-9_]+)='?([^']*)'?$/.exec(line);
  if (m) env[m[1]] = m[2];
}
const M = env.KEYWARDEN_PKCS11_MODULE;
const token = env.KEYWARDEN_PKCS11_TOKEN;
const childEnv = { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF };
const takes = (pin) => {
  try {
    execFileSync('pkcs11-tool', ['--module', M, '--token-label', token, '--login', '--pin', pin, '--list-objects'], {
      env: childEnv,
      stdio: 'ignore',
    });
    return true;
  } catch {
    return false;
  }
};
const child = `
const pkcs11js = require(process.argv[1]);
const p = new pkcs11js.PKCS11(); p.load(process.argv[4]); p.C_Initialize();
const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === process.argv[5]);
const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
p.C_Login(s, pkcs11js.CKU_USER, process.argv[2]);
process.stdout.write('go\\n');
p.C_SetPIN(s, process.argv[2], process.argv[3]);
process.stdout.write('done\\n');
`;
let pin = readFileSync(env.KEYWARDEN_PKCS11_PIN_FILE, 'utf8').trim();
const result = { softhsm2: M, rounds: 0, killedInsideSetPin: 0, tokenLost: 0 };
try {
  for (let i = 0; i < rounds; i++) {
    const next = `pin-${i}-${Math.random().toString(36).slice(2, 12)}`;
    const delayUs = Math.floor(Math.random() * 3000);
    const out = await new Promise((resolve) => {
      const c = spawn(process.execPath, ['-e', child, pkcs11jsPath, pin, next, M, token], {
        env: childEnv,
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let buf = '';
      let armed = false;
      c.stdout.on('data', (d) => {
        buf += d;
        if (buf.includes('go\n') && !armed) {
          armed = true;
          const t0 = process.hrtime.bigint();
          while (process.hrtime.bigint() - t0 < BigInt(delayUs * 1000));
          c.kill('SIGKILL');
        }
      });
      c.on('close', () => resolve(buf));
    });
    result.rounds++;
    if (!out.includes('done')) result.killedInsideSetPin++;
    const oldOk = takes(pin);
    const newOk = takes(next);
    if (!oldOk && !newOk) {
      result.tokenLost++;
      result.lostAtRound = i;
      result.lostDelayUs = delayUs;
      break;
    }
    if (newOk) pin = next;
  }
} finally {
  execFileSync('bash', [path.join(here, 'softhsm.sh'), 'stop', env.KEYWARDEN_SOFTHSM_DIR], { stdio: 'ignore' });
}
console.log(JSON.stringify(result));

// One writer process of test/pki-postgres.test.ts: opens the PostgreSQL store (schema SCHEMA; the
// connection from KEYWARDEN_PG_URL / KEYWARDEN_PG_PASSWORD_FILE in the environment), as an
// application would, unseals the software root with the key from the first stdin line (hex, never
// argv), creates its own key pair, prints "ready", and on the second stdin line ("go") runs
// ROUNDS rounds on the SHARED key pair and CA at once with the other writers: rotate the shared
// key pair, issue a certificate for the new version from the CA, add it to the shared key pair's
// certificates, revoke every other one, make a CRL (written to OUT/<writer>-<round>.crl).
// Prints one JSON line: the versions it made and the serials it issued and revoked.
//   node _pki-pg-writer.mjs SCHEMA WRITER ROUNDS OUT
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { CertificateAuthority, Certificates, createCsr, KeyPairs } from '@keywarden/pki';
import { PostgresKeyStore } from '@keywarden/store-postgres';

const [schema, writer, rounds, out] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const unsealKey = Uint8Array.from(Buffer.from((await lines.next()).value, 'hex'));
const store = await PostgresKeyStore.open({ schema, env: process.env });
const root = await SoftwareRoot.load(store);
await root.unseal(unsealKey);
unsealKey.fill(0);
const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
const pairs = new KeyPairs({ keywarden: kw });
const certs = new Certificates({ keywarden: kw, keyPairs: pairs });
const ca = await CertificateAuthority.open(kw, pairs, 'ca');
process.stdout.write('ready\n');
await lines.next();

const result = { versions: [], issued: [], revoked: [] };
// Creates of different names at once: the index keeps them all.
await pairs.create(`own-${writer}`, { algorithm: 'ECDSA-P256' });
for (let round = 0; round < Number(rounds); round++) {
  const rotated = await pairs.rotate('shared');
  const version = rotated.primaryVersion;
  result.versions.push(version);
  const csr = await createCsr(await pairs.signer('shared', version), { subject: { commonName: `${writer}-${round}` } });
  const der = await ca.issue({ csr, profile: 'server', validityDays: 1 });
  const held = await certs.add('shared', der, { source: 'issued', ca: 'ca' });
  result.issued.push(held.serialNumber);
  if (round % 2 === 1) {
    await ca.revoke(held.serialNumber, { reason: 'superseded' });
    result.revoked.push(held.serialNumber);
  }
  writeFileSync(join(out, `${writer}-${round}.crl`), await ca.crl({ nextUpdateHours: 1 }));
}
await kw.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);

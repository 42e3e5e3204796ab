/**
 * `keywarden status` for a folder whose root is a device (D/root.uri: `pkcs11:…`, `tpm:…`): the
 * root's kind, the token or TPM it lives in, the mechanism that wraps with it, whether it is
 * sealed, and for PKCS#11 the worker pool. Nothing secret: no PIN, no auth value, no URI query
 * (it may name a PIN file).
 */
import { AgentClient, type AgentStatus, isAgentUnavailable } from '@keywarden/agent';
import { devicePendingRekeyOf, folderDeviceSecretShares } from '@keywarden/ceremony';
import type { RootOfTrust } from '@keywarden/core';
import type { CliIO } from '../io.js';
import { formatJson, formatPairs, print } from '../output.js';
import { folderStoreOf, openFolderRoot, type SocketLocation, type StoreLocation } from '../store-dir.js';
import { agentStateText } from './_agent-state.js';
import { pendingJson, pendingText } from './_pending.js';

interface Pkcs11Like {
  record: { token: string; tokenSerial: string; object: string };
  pool: { size: number; replaced: number; inFlight(): number[]; kind?: 'threads' | 'processes' };
}
interface TpmLike {
  record: { alg: 'ecc' | 'rsa'; handle?: number; pcrs?: number[] };
  tpmInfo?(): Promise<{ manufacturer: string; vendor: string; firmwareVersion: string }>;
}

export async function deviceStatus(
  io: CliIO,
  loc: StoreLocation,
  scheme: string,
  json: boolean,
  socket?: SocketLocation,
): Promise<void> {
  const kept = await folderStoreOf(loc);
  const split = await folderDeviceSecretShares(loc);
  const rekey = await devicePendingRekeyOf(loc);
  const pending = rekey && { kind: 'rekey' as const, ...rekey };
  const agent = split && socket ? await agentStatus(socket) : undefined;
  const { store, root } = await openFolderRoot(loc, 'read', { env: io.env });
  try {
    const d = root.describe();
    const sealed = root.sealable ? root.sealable.isSealed() : false;
    const keys = (await store.listKeys()).length;
    const info: Record<string, unknown> = {
      store: loc.dir,
      ...kept.json,
      mode: 'device',
      rootId: d.id,
      root: { kind: d.kind, description: d.label, mechanism: mechanismOf(scheme, root), sealed },
      keys,
    };
    const pairs: [string, string][] = [
      ['key store', `${loc.display} (${kept.text})`],
      ['root', `${d.id} (${d.kind})`],
      ['device', d.label],
      ['mechanism', mechanismOf(scheme, root)],
      [
        'unseal',
        split
          ? `split knowledge: any ${split.threshold} of ${split.shares} shares of share set ${split.shareSetId} (the ${split.purpose === 'tpm-auth' ? 'TPM auth value' : 'user PIN'}), given to the agent`
          : root.sealable
            ? sealed
              ? `sealed (${root.sealable.unsealSecret().label} not given: add it to the root URI or run on a terminal)`
              : `unsealed by the root URI's ${scheme === 'tpm' ? 'auth' : 'PIN'} source`
            : 'no auth value: the device alone unlocks it',
      ],
    ];
    if (scheme === 'pkcs11') {
      const p = root as unknown as Pkcs11Like;
      const busy = p.pool.inFlight().reduce((a, b) => a + b, 0);
      info.token = { label: p.record.token, serial: p.record.tokenSerial, object: p.record.object };
      info.pool = { workers: p.pool.size, kind: p.pool.kind ?? 'threads', inFlight: busy, replaced: p.pool.replaced };
      pairs.push(['token', `"${p.record.token}" (serial ${p.record.tokenSerial}), root object "${p.record.object}"`]);
      pairs.push([
        'pool',
        `${p.pool.size} worker ${p.pool.kind === 'processes' ? 'process' : 'thread'}${p.pool.size === 1 ? '' : p.pool.kind === 'processes' ? 'es' : 's'}, ${busy} request${busy === 1 ? '' : 's'} in flight, ${p.pool.replaced} replaced`,
      ]);
    } else if (scheme === 'tpm') {
      const t = root as unknown as TpmLike;
      // TPM2_GetCapability; not while this folder's agent holds the TPM (one connection at a time).
      const tpm = agent || typeof t.tpmInfo !== 'function' ? undefined : await t.tpmInfo();
      info.tpm = {
        storageKey: t.record.alg === 'ecc' ? 'ECC P-256' : 'RSA-2048',
        handle: t.record.handle ?? null,
        pcrs: t.record.pcrs ?? [],
        manufacturer: tpm?.manufacturer ?? null,
        vendor: tpm?.vendor ?? null,
        firmwareVersion: tpm?.firmwareVersion ?? null,
      };
      pairs.push([
        'TPM',
        tpm
          ? `manufacturer "${tpm.manufacturer}", vendor "${tpm.vendor}", firmware ${tpm.firmwareVersion}`
          : 'not asked: the agent holds the TPM (stop it to see the manufacturer)',
      ]);
      pairs.push([
        'PCR policy',
        t.record.pcrs?.length
          ? `every KEK bound to SHA-256 PCRs ${t.record.pcrs.join(',')}`
          : 'none (KEKs not bound to PCRs)',
      ]);
    }
    if (split) {
      info.mode = 'device-split-knowledge';
      info.shareSetId = split.shareSetId;
      info.threshold = split.threshold;
      info.shares = split.shares;
      info.purpose = split.purpose;
      info.commitments = split.commitments;
      info.pending = pendingJson(pending);
      info.agent = agent
        ? {
            running: true,
            socket: socket?.path,
            pid: agent.pid,
            sealed: agent.sealed,
            accepted: agent.accepted,
            indices: agent.indices,
          }
        : { running: false, socket: socket?.path ?? null };
      pairs.push([
        'agent',
        agent
          ? `running on ${socket?.display} (pid ${agent.pid}), ${agentStateText(agent)}`
          : `no agent running on ${socket?.display ?? 'its socket'} (start one with \`keywarden agent\`)`,
      ]);
      if (pending) pairs.push(['pending', `${pendingText(pending)}; the current shares still work`]);
    }
    pairs.push(['keys', String(keys)]);
    await print(io.stdout, json ? formatJson(info) : formatPairs(pairs));
  } finally {
    await root.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

function mechanismOf(scheme: string, root: RootOfTrust): string {
  if (scheme === 'pkcs11') {
    return 'CKM_AES_GCM (AES-256-GCM, 12-byte IV) in the token; KEKs as token objects (--kek-mode hsm) or wrapped by the root';
  }
  return root.describe().wrapAlgorithm;
}

async function agentStatus(socket: SocketLocation): Promise<AgentStatus | undefined> {
  try {
    const client = await AgentClient.connect(socket);
    try {
      return await client.status();
    } finally {
      await client.close();
    }
  } catch (err) {
    if (isAgentUnavailable(err)) return undefined;
    throw err;
  }
}

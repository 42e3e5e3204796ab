/**
 * The KEK version state machine, in one place (docs/lifecycle.md). Every lifecycle change the key
 * manager makes is planned here from a snapshot of the key (its record, versions and lifecycle
 * bookkeeping) and then written by the store in one compare-and-swap transaction (KeyUpdate), so
 * that two processes changing the same key cannot both win.
 *
 * Invariants (Tink's KeysetManager rules, plus Vault transit's minimum decryption version):
 * - exactly one primary version, the only one that wraps new data keys; other enabled versions
 *   unwrap only;
 * - only an enabled version at or above the minimum decryption version becomes primary;
 * - the primary cannot be disabled, compromised without a replacement, or destroyed — except when
 *   it is the key's last usable version and the caller confirms (retiring a whole key, e.g. a
 *   tenant that left);
 * - disabled ⇄ enabled is reversible; compromised is irreversible and never unwraps again;
 *   destroyed is terminal and its material is erased;
 * - a version is destroyed only once disabled or compromised, after a grace period (or forced);
 * - version numbers are never reused: a new version is one above every version ever made,
 *   destroyed ones included (their records stay, without material).
 * The store enforces the facts about stored data on its own (keystore-checks.ts checkTransition).
 */
import {
  InvalidInputError,
  KeyCompromisedError,
  KeyDestroyedError,
  KeyNotFoundError,
  KeyStateError,
  KeyVersionRetiredError,
} from './errors.js';
import type { KeyLifecycle, KeyRecord, KeyUpdate, KeyVersionRecord, RotationPolicy } from './keystore.js';

export interface KeySnapshot {
  key: KeyRecord;
  versions: KeyVersionRecord[];
  life: KeyLifecycle;
}

export type LifecycleOp =
  | { op: 'rotate'; newVersion: KeyVersionRecord }
  | { op: 'primary'; version: number }
  | { op: 'disable'; version: number; confirmLastVersion?: boolean }
  | { op: 'enable'; version: number }
  | { op: 'compromise'; version: number; newVersion?: KeyVersionRecord }
  | { op: 'destroy'; version: number; force?: boolean; confirmLastVersion?: boolean; graceMs: number; now: Date }
  | { op: 'minDecryption'; version: number }
  | { op: 'rotation'; policy: RotationPolicy };

/** The changes of a KeyUpdate (without keyId, revision and time); null when nothing changes. */
export type PlannedChange = Omit<KeyUpdate, 'keyId' | 'expectedRevision' | 'at'>;

/** The number the next version gets: one above every version ever made. */
export function nextVersionNumber(snapshot: KeySnapshot): number {
  return Math.max(0, ...snapshot.versions.map((v) => v.version)) + 1;
}

/** Plan one transition, or throw the typed error that explains why it is not allowed. */
export function planTransition(snapshot: KeySnapshot, change: LifecycleOp): PlannedChange | null {
  const { key, versions, life } = snapshot;
  const name = key.name;
  const find = (version: number): KeyVersionRecord => {
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new InvalidInputError('keywarden: version must be a positive integer');
    }
    const found = versions.find((v) => v.version === version);
    if (!found) throw new KeyNotFoundError(`keywarden: key "${name}" has no version ${version}`);
    return found;
  };
  const othersEnabled = (version: number) => versions.some((v) => v.version !== version && v.state === 'enabled');
  const checkNew = (record: KeyVersionRecord) => {
    if (record.version !== nextVersionNumber(snapshot) || record.state !== 'enabled') {
      throw new KeyStateError(
        `keywarden: a new version of key "${name}" must be enabled and numbered after every other`,
      );
    }
  };

  switch (change.op) {
    case 'rotate':
      checkNew(change.newVersion);
      return { addVersion: change.newVersion, primaryVersion: change.newVersion.version };

    case 'primary': {
      const target = find(change.version);
      if (target.state !== 'enabled') {
        throw new KeyStateError(
          `keywarden: key "${name}" v${change.version} is ${target.state}; only an enabled version can become primary`,
        );
      }
      if (change.version < life.minDecryptionVersion) {
        throw new KeyVersionRetiredError(
          `keywarden: key "${name}" v${change.version} is below the minimum decryption version (v${life.minDecryptionVersion}) and cannot become primary`,
        );
      }
      return key.primaryVersion === change.version ? null : { primaryVersion: change.version };
    }

    case 'disable': {
      const target = find(change.version);
      if (target.state === 'disabled') return null;
      if (target.state !== 'enabled') {
        throw new KeyStateError(
          `keywarden: key "${name}" v${change.version} is ${target.state} and cannot be disabled`,
        );
      }
      if (change.version === key.primaryVersion) {
        if (othersEnabled(change.version)) {
          throw new KeyStateError(
            `keywarden: v${change.version} is the primary version of key "${name}" and cannot be disabled; rotate or make another version primary first`,
          );
        }
        if (change.confirmLastVersion !== true) {
          throw new KeyStateError(
            `keywarden: v${change.version} is the last enabled version of key "${name}": disabling it stops all encryption and decryption under the key; confirm to do so`,
          );
        }
      }
      return { states: [{ version: change.version, state: 'disabled' }] };
    }

    case 'enable': {
      const target = find(change.version);
      if (target.state === 'enabled') return null;
      if (target.state === 'compromised') {
        throw new KeyCompromisedError(
          `keywarden: key "${name}" v${change.version} is compromised and can never be enabled again`,
        );
      }
      if (target.state === 'destroyed') {
        throw new KeyDestroyedError(`keywarden: key "${name}" v${change.version} was destroyed; its material is gone`);
      }
      return { states: [{ version: change.version, state: 'enabled' }] };
    }

    case 'compromise': {
      const target = find(change.version);
      if (target.state === 'destroyed') {
        throw new KeyDestroyedError(`keywarden: key "${name}" v${change.version} was destroyed; its material is gone`);
      }
      const plan: PlannedChange = {};
      if (target.state !== 'compromised') plan.states = [{ version: change.version, state: 'compromised' }];
      if (change.newVersion) {
        checkNew(change.newVersion);
        plan.addVersion = change.newVersion;
        plan.primaryVersion = change.newVersion.version;
      } else if (change.version === key.primaryVersion && target.state === 'enabled') {
        throw new KeyStateError(
          `keywarden: v${change.version} is the primary version of key "${name}"; compromising it needs a rotation in the same change`,
        );
      }
      return plan.states || plan.addVersion ? plan : null;
    }

    case 'destroy': {
      const target = find(change.version);
      if (target.state === 'destroyed') return null;
      if (target.state === 'enabled') {
        throw new KeyStateError(
          `keywarden: key "${name}" v${change.version} is enabled; disable it first, then destroy it after the grace period`,
        );
      }
      const liveAfter = versions.filter((v) => v.version !== change.version && v.state !== 'destroyed').length;
      if ((change.version === key.primaryVersion || liveAfter === 0) && change.confirmLastVersion !== true) {
        throw new KeyStateError(
          `keywarden: v${change.version} is the ${liveAfter === 0 ? 'last version' : 'primary version'} of key "${name}": destroying it makes the key unusable; confirm to do so`,
        );
      }
      const since = change.now.getTime() - target.updatedAt.getTime();
      if (change.force !== true && since < change.graceMs) {
        const hours = Math.ceil((change.graceMs - since) / 3_600_000);
        throw new KeyStateError(
          `keywarden: key "${name}" v${change.version} became ${target.state} less than the grace period ago; destroy it in ${hours} h, or force it`,
        );
      }
      return { states: [{ version: change.version, state: 'destroyed' }] };
    }

    case 'minDecryption': {
      const v = change.version;
      if (!Number.isSafeInteger(v) || v < 1)
        throw new InvalidInputError('keywarden: version must be a positive integer');
      if (v > key.primaryVersion) {
        throw new KeyStateError(
          `keywarden: the minimum decryption version of key "${name}" cannot be above its primary version (v${key.primaryVersion})`,
        );
      }
      return v === life.minDecryptionVersion ? null : { minDecryptionVersion: v };
    }

    case 'rotation':
      return { rotation: change.policy };
  }
}

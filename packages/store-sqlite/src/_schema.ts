/**
 * Schema and migrations of the SQLite key store.
 *
 * Rules:
 * - a migration is appended, never edited: a released store file may already contain it;
 * - every migration runs in the same IMMEDIATE transaction as the row recording it in
 *   `schema_version`, so a crash leaves the file at the old version or the new one;
 * - a file whose schema_version is above SCHEMA_VERSION was written by a newer Keywarden and is
 *   refused (an old reader could misread rows or drop invariants it does not know about).
 */

/** `PRAGMA application_id` of a Keywarden key store: "KWKS". Marks the file as ours. */
export const APPLICATION_ID = 0x4b574b53;

export interface Migration {
  readonly version: number;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    // STRICT tables: SQLite refuses values of the wrong type instead of converting them.
    // keys → key_versions is a circular reference: a key's primary version must exist. It is
    // DEFERRED so createKey can insert the key and its first version in one transaction.
    sql: `
      CREATE TABLE keys (
        id              TEXT    NOT NULL PRIMARY KEY,
        name            TEXT    NOT NULL UNIQUE,
        environment     TEXT,
        service         TEXT,
        tenant          TEXT,
        purpose         TEXT,
        primary_version INTEGER NOT NULL CHECK (primary_version >= 1),
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        FOREIGN KEY (id, primary_version) REFERENCES key_versions (key_id, version)
          DEFERRABLE INITIALLY DEFERRED
      ) STRICT;

      CREATE TABLE key_versions (
        key_id           TEXT    NOT NULL REFERENCES keys (id),
        version          INTEGER NOT NULL CHECK (version >= 1),
        state            TEXT    NOT NULL CHECK (state IN ('enabled', 'disabled', 'compromised', 'destroyed')),
        root_id          TEXT    NOT NULL,
        wrapped_material BLOB    NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        PRIMARY KEY (key_id, version),
        CHECK (state <> 'destroyed' OR length(wrapped_material) = 0)
      ) STRICT;

      CREATE TABLE meta (
        name  TEXT NOT NULL PRIMARY KEY,
        value BLOB NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 2,
    // Key lifecycle (docs/lifecycle.md): a revision for compare-and-swap updates, the minimum
    // decryption version, the key's own rotation policy (NULL: the manager's default), and the
    // data-key wraps reserved per version.
    sql: `
      ALTER TABLE keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0);
      ALTER TABLE keys ADD COLUMN min_decryption_version INTEGER NOT NULL DEFAULT 1
        CHECK (min_decryption_version >= 1);
      ALTER TABLE keys ADD COLUMN rotation_max_age_ms INTEGER CHECK (rotation_max_age_ms >= 1);
      ALTER TABLE keys ADD COLUMN rotation_max_uses INTEGER CHECK (rotation_max_uses >= 1);
      ALTER TABLE key_versions ADD COLUMN uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0);
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Created before the first migration; one row per applied migration. */
export const SCHEMA_VERSION_TABLE = `
  CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
  ) STRICT;
`;

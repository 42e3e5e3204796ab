/**
 * Keep a PKCS#11 module loaded for the life of the process (RTLD_NODELETE, from the main thread).
 *
 * The pool loads the module in each worker thread and never calls C_Finalize from one thread while
 * another may be inside the module (PKCS#11 leaves that undefined; SoftHSM2 2.6 crashes). But when
 * the last worker of a pool ends, its dlclose would run the module's static destructors
 * (__cxa_finalize) on that thread while the other workers are still being torn down, and SoftHSM2
 * then crashes the process (SIGSEGV in about one `keywarden demo --root pkcs11` in ten, backtrace
 * _dl_close → __cxa_finalize → libsofthsm2; 0 in 24 once pinned). Pinned, the destructors run once,
 * at process exit, on the main thread.
 *
 * Node exposes no dlopen of a plain library: process.dlopen() loads it (with our flags), then fails
 * to register it as an addon ("did not self-register") and dlcloses it — which RTLD_NODELETE turns
 * into a no-op. That failure is the expected outcome and is swallowed; a module that cannot be
 * loaded at all is left to the pool, which reports it with its own typed error.
 */
import { constants } from 'node:os';
import * as path from 'node:path';

const pinned = new Set<string>();

/** glibc's <dlfcn.h> value on Linux, Apple's on macOS (Node does not export RTLD_NODELETE). */
function noDeleteFlag(): number | undefined {
  if (process.platform === 'linux') return 0x01000;
  if (process.platform === 'darwin') return 0x80;
  return undefined;
}

/** Pin `modulePath` once per process. True when the module is now pinned. */
export function pinModule(modulePath: string): boolean {
  if (!path.isAbsolute(modulePath)) return false;
  if (pinned.has(modulePath)) return true;
  const noDelete = noDeleteFlag();
  const now = constants.dlopen.RTLD_NOW;
  if (noDelete === undefined || now === undefined) return false;
  try {
    process.dlopen({ exports: {} }, modulePath, now | noDelete);
  } catch {
    // Expected: not a Node addon (see above). The library stays loaded, pinned.
  }
  pinned.add(modulePath);
  return true;
}

/** Where an agent listens, and how messages name it. */
export interface SocketLocation {
  /** The socket's path. */
  path: string;
  /** How to show it in messages and logs (a path relative to the working directory, say). */
  display: string;
}

/** A path, or a SocketLocation as it is. */
export function socketLocation(socket: string | SocketLocation): SocketLocation {
  if (typeof socket === 'string') return { path: socket, display: socket };
  return { path: socket.path, display: socket.display };
}

const SYSTEM_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EADDRINUSE: 'address in use',
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EPIPE: 'broken pipe',
  ENOTDIR: 'not a directory',
  ENAMETOOLONG: 'file name too long',
  EMFILE: 'too many open files',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
};

/** "no such file", "permission denied"… for a Node system error code, or the code itself. */
export function systemErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return 'failed';
  return SYSTEM_ERRORS[code] ?? code;
}

/** One line describing anything thrown, for the agent's own log (never sent to a client). */
export function describeForLog(err: unknown): string {
  if (err instanceof Error) return err.message.split(/\r?\n/)[0] ?? err.name;
  return 'non-error value thrown';
}

import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { OutputSink } from '../_streams.js';

/** Last stage of a pipeline: write every chunk to the sink (wiping it when the sink released it). */
export function drainInto(sink: OutputSink, wipeChunks = false): (source: AsyncIterable<unknown>) => Promise<void> {
  return async (source) => {
    for await (const chunk of source) {
      const bytes = chunk as Uint8Array;
      await sink.write(bytes);
      if (wipeChunks && sink.releasesBuffers) bytes.fill(0);
    }
  };
}

/**
 * input → transform → sink. When writing to the sink fails (ENOSPC, EPIPE…), that error is the
 * one reported: pipeline() would otherwise often report the AbortError with which it tore the
 * transform down first, and the command would say "interrupted" about a full disk.
 */
export async function pipeInto(
  input: Readable,
  transform: Transform,
  sink: OutputSink,
  options: { wipeChunks?: boolean; signal?: AbortSignal | undefined },
): Promise<void> {
  let writeError: unknown;
  const recording: OutputSink = {
    releasesBuffers: sink.releasesBuffers,
    write: async (chunk) => {
      try {
        await sink.write(chunk);
      } catch (err) {
        writeError ??= err;
        throw err;
      }
    },
    commit: () => sink.commit(),
    abort: () => sink.abort(),
  };
  try {
    await pipeline(input, transform, drainInto(recording, options.wipeChunks ?? false), {
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (err) {
    throw writeError ?? err;
  }
}

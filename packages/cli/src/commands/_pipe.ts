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

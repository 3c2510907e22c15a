// Atomic file writes: the target is either the old file or the complete new
// one, never a half-written mix, even if the process dies mid-write.
//
//   <dir>/.<name>.<pid>.<random>.tmp   written, fsynced, closed
//   rename(tmp, <dir>/<name>)          atomic on POSIX within one filesystem
//   fsync(<dir>)                       makes the rename itself durable
//
// Chunks may come from a generator: each chunk is written (synchronously)
// before the next is asked for, so a producer may reuse one scratch buffer.
// Anything the producer throws aborts the write the same way an IO error does.
import {
  closeSync, fchmodSync, fsyncSync, openSync, renameSync, statSync, unlinkSync, writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';

export type AtomicChunk = string | ArrayBufferView;
export type AtomicData = AtomicChunk | Iterable<AtomicChunk>;

/** Codes with which platforms refuse to fsync a directory; durability of the
 * rename is then the filesystem's business, not an error of ours. */
const DIR_FSYNC_UNSUPPORTED = new Set(['EISDIR', 'EINVAL', 'EPERM', 'EACCES', 'ENOTSUP', 'EBADF']);

function toBytes(chunk: AtomicChunk): Uint8Array {
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError(`chunk must be a string or an ArrayBufferView, got ${Object.prototype.toString.call(chunk)}`);
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.byteLength) {
    const n = writeSync(fd, bytes, off, bytes.byteLength - off);
    if (n <= 0) throw new Error(`write returned ${n}`);
    off += n;
  }
}

function* chunksOf(data: AtomicData): Iterable<AtomicChunk> {
  if (typeof data === 'string' || ArrayBuffer.isView(data)) { yield data; return; }
  if (data == null || typeof (data as Iterable<AtomicChunk>)[Symbol.iterator] !== 'function') {
    throw new TypeError(`data must be a string, an ArrayBufferView or an iterable of them, got ${Object.prototype.toString.call(data)}`);
  }
  yield* data as Iterable<AtomicChunk>;
}

function fsyncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch (e) {
    if (!DIR_FSYNC_UNSUPPORTED.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

/** Writes `data` (bytes, a string, or an iterable of chunks) to `path`
 * atomically. On failure the temporary file is removed and the error is
 * rethrown with the path in its message (`code` and `cause` kept). */
export function writeFileAtomic(path: string, data: AtomicData): void {
  const target = resolve(path);
  const dir = dirname(target);
  const tmp = join(dir, `.${basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | null = null;
  let renamed = false;
  try {
    fd = openSync(tmp, 'wx', 0o666);
    // Keep the permissions of the file being replaced.
    let oldMode: number | null = null;
    try { oldMode = statSync(target).mode & 0o7777; } catch { /* no old file */ }
    if (oldMode !== null) fchmodSync(fd, oldMode);
    for (const chunk of chunksOf(data)) writeAll(fd, toBytes(chunk));
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, target);
    renamed = true;
    fsyncDir(dir);
  } catch (e) {
    if (fd !== null) { try { closeSync(fd); } catch { /* already failing */ } }
    if (!renamed) { try { unlinkSync(tmp); } catch { /* never created */ } }
    const err = e as NodeJS.ErrnoException;
    const msg = e instanceof Error ? e.message : String(e);
    const wrapped: NodeJS.ErrnoException = new Error(`could not write ${target}: ${msg}`, { cause: e });
    if (err && typeof err === 'object' && err.code !== undefined) wrapped.code = err.code;
    throw wrapped;
  }
}

/** `JSON.stringify(value, null, indent)` plus a final newline, atomically. */
export function writeJsonAtomic(path: string, value: unknown, indent = 2): void {
  const text = JSON.stringify(value, null, indent);
  if (text === undefined) throw new TypeError(`could not write ${resolve(path)}: value is not serialisable as JSON`);
  writeFileAtomic(path, text + '\n');
}

// Opening a file a user named: a directory, a FIFO (whose open blocks until a
// writer appears: a hang), a socket or a device is refused with its path
// before anything reads from it.
import { openSync, readFileSync, statSync } from 'node:fs';

/** Throws a clear error unless `path` is a regular file (after symlinks). */
export function checkRegularFile(path: string, what = 'file'): void {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`${path}: ${code === 'ENOENT' ? `no such ${what}` : `cannot read this ${what} (${(e as Error).message})`}`);
  }
  if (st.isDirectory()) throw new Error(`${path}: is a directory, expected a ${what}`);
  if (!st.isFile()) throw new Error(`${path}: is not a regular file (a FIFO, socket or device?), expected a ${what}`);
}

/** openSync(path, 'r') for a regular file only. */
export function openRegularFile(path: string, what = 'file'): number {
  checkRegularFile(path, what);
  return openSync(path, 'r');
}

/** readFileSync(path, 'utf8') for a regular file only. */
export function readTextFile(path: string, what = 'file'): string {
  checkRegularFile(path, what);
  return readFileSync(path, 'utf8');
}

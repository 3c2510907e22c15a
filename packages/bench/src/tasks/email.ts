// Minimal RFC 822 / MIME parsing for the SpamAssassin task (spam.ts): headers
// split from the body and unfolded, multipart and message/rfc822 entities
// walked for their text, Content-Transfer-Encoding (base64, quoted-printable)
// undone with the part's charset, RFC 2047 encoded words in headers decoded,
// and HTML bodies reduced to text. Moved out of spam.ts, which re-exports
// everything exported here.

export interface ParsedEmail {
  subject: string;
  body: string;
}

type Headers = Map<string, string>;

/** Splits headers from body at the first empty line; unfolds and indexes headers (first occurrence wins). */
export function splitMessage(text: string): { headers: Headers; body: string } {
  const normalized = text.replace(/\r\n?/g, '\n');
  const sep = normalized.indexOf('\n\n');
  const head = sep < 0 ? normalized : normalized.slice(0, sep);
  const body = sep < 0 ? '' : normalized.slice(sep + 2);
  const headers: Headers = new Map();
  let name: string | null = null;
  for (const line of head.split('\n')) {
    if (/^[ \t]/.test(line) && name !== null) {
      // Folded continuation of the previous header.
      headers.set(name, `${headers.get(name)!} ${line.trim()}`);
      continue;
    }
    const m = /^([!-9;-~]+):[ \t]*(.*)$/.exec(line); // field-name: printable ASCII except ':'
    if (!m) {
      name = null; // the mbox "From " line, or junk
      continue;
    }
    const key = m[1].toLowerCase();
    if (headers.has(key)) {
      name = null; // keep the first occurrence; ignore this one's continuations
      continue;
    }
    name = key;
    headers.set(key, m[2].trim());
  }
  return { headers, body };
}

/** Subject (RFC 2047 encoded words decoded) and readable body text of one raw message. */
export function parseEmail(text: string): ParsedEmail {
  const { headers, body } = splitMessage(text);
  const subject = decodeHeader(headers.get('subject') ?? '').replace(/\s+/g, ' ').trim();
  let bodyText: string;
  try {
    bodyText = entityText(headers, body, 0) ?? body;
  } catch {
    bodyText = body; // anything unexpected in the MIME structure: the raw body
  }
  return { subject, body: tidy(bodyText) };
}

interface ContentType {
  type: string; // 'text/plain'
  params: Map<string, string>;
}

export function parseContentType(value: string | undefined): ContentType {
  const params = new Map<string, string>();
  if (!value) return { type: 'text/plain', params };
  const [typePart, ...rest] = splitParams(value);
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq < 0) continue;
    let v = p.slice(eq + 1).trim();
    if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
    params.set(p.slice(0, eq).trim().toLowerCase(), v);
  }
  const type = typePart.trim().toLowerCase();
  return { type: /^[a-z0-9.+-]+\/[a-z0-9.+-]+$/.test(type) ? type : 'text/plain', params };
}

/** Splits on ';' outside double quotes. */
function splitParams(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && quoted && i + 1 < value.length) {
      cur += c + value[++i];
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (c === ';' && !quoted) {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}

const MAX_DEPTH = 8;

/**
 * The text of one MIME entity, or null when it holds no text (an attachment,
 * an image). Multipart: alternative prefers its text/plain part (falling back
 * to the HTML one), other kinds join the text of all their parts.
 */
function entityText(headers: Headers, body: string, depth: number): string | null {
  const ct = parseContentType(headers.get('content-type'));
  const [major] = ct.type.split('/');
  if (major === 'multipart') {
    const boundary = ct.params.get('boundary');
    const parts = boundary && depth < MAX_DEPTH ? splitMultipart(body, boundary) : null;
    if (!parts || parts.length === 0) return body; // malformed: the raw body
    const texts: { type: string; text: string }[] = [];
    for (const part of parts) {
      const { headers: ph, body: pb } = splitMessage(part);
      const t = entityText(ph, pb, depth + 1);
      if (t !== null && t.trim().length > 0) texts.push({ type: parseContentType(ph.get('content-type')).type, text: t });
    }
    if (ct.type === 'multipart/alternative') {
      const plain = texts.find((t) => t.type === 'text/plain');
      return (plain ?? texts[0])?.text ?? '';
    }
    return texts.map((t) => t.text).join('\n\n');
  }
  if (ct.type === 'message/rfc822' && depth < MAX_DEPTH) {
    const inner = splitMessage(body);
    const sub = decodeHeader(inner.headers.get('subject') ?? '');
    const t = entityText(inner.headers, inner.body, depth + 1) ?? '';
    return sub ? `${sub}\n\n${t}` : t;
  }
  if (major !== 'text') return null;
  if (/^attachment/i.test(headers.get('content-disposition') ?? '') && ct.type !== 'text/plain' && ct.type !== 'text/html') {
    return null; // e.g. a text/x-vcard or text/csv attachment
  }
  const decoded = decodeTransfer(body, headers.get('content-transfer-encoding'), ct.params.get('charset'));
  // Many spams send an HTML document as text/plain or with no Content-Type at all.
  const undeclaredHtml = /^\s*</.test(decoded) && /<(html|head|body)[\s>]/i.test(decoded);
  return ct.type === 'text/html' || undeclaredHtml ? htmlToText(decoded) : decoded;
}

/** The parts of a multipart body (preamble and epilogue dropped); null when the boundary never occurs. */
export function splitMultipart(body: string, boundary: string): string[] | null {
  const lines = body.split('\n');
  const open = `--${boundary}`;
  const close = `--${boundary}--`;
  const parts: string[] = [];
  let cur: string[] | null = null;
  let seen = false;
  for (const line of lines) {
    const l = line.trimEnd();
    if (l === close) {
      if (cur) parts.push(cur.join('\n'));
      cur = null;
      seen = true;
      break;
    }
    if (l === open) {
      if (cur) parts.push(cur.join('\n'));
      cur = [];
      seen = true;
      continue;
    }
    if (cur) cur.push(line);
  }
  if (cur) parts.push(cur.join('\n')); // no closing boundary: keep the last part
  return seen ? parts : null;
}

/**
 * Undoes a Content-Transfer-Encoding. Base64 and quoted-printable bytes are
 * decoded with the charset (UTF-8 when absent or unknown to TextDecoder,
 * Latin-1 for us-ascii so stray 8-bit bytes survive). If decoding fails (no
 * base64 at all, or it decodes to mostly control bytes) the raw body is returned.
 */
export function decodeTransfer(body: string, encoding: string | undefined, charset: string | undefined): string {
  const enc = (encoding ?? '').trim().toLowerCase();
  try {
    if (enc === 'base64') {
      // The data runs up to the first line that is not base64; whatever follows
      // (a mailing list's footer, say) is kept as it is.
      const lines = body.split('\n');
      let i = 0;
      while (i < lines.length && lines[i].trim() === '') i++;
      const start = i;
      while (i < lines.length && /^[A-Za-z0-9+/]*={0,2}$/.test(lines[i].trim())) i++;
      const data = lines.slice(start, i).join('').replace(/\s+/g, '');
      if (data.length === 0) return body;
      const text = bytesToText(Buffer.from(data, 'base64'), charset);
      if (!looksLikeText(text)) return body;
      const rest = lines.slice(i).join('\n').trim();
      return rest ? `${text}\n\n${rest}` : text;
    }
    if (enc === 'quoted-printable') return decodeQuotedPrintable(body, charset);
  } catch {
    return body;
  }
  return body; // 7bit, 8bit, binary, none: the string is already text
}

/**
 * Quoted-printable (RFC 2045 6.7): soft line breaks ("=" at the end of a line)
 * removed, runs of =XX escapes decoded as bytes in the charset; literal
 * characters are kept as they are.
 */
export function decodeQuotedPrintable(body: string, charset?: string): string {
  // Trailing whitespace on a line is padding (removed); before a soft break it is text (kept).
  const joined = body.replace(/[ \t]+$/gm, '').replace(/=\r?\n/g, '');
  return joined.replace(/(?:=[0-9A-Fa-f]{2})+/g, (run) => {
    const bytes = Buffer.from(run.replace(/=/g, ''), 'hex');
    return bytesToText(bytes, charset);
  });
}

function bytesToText(bytes: Uint8Array, charset: string | undefined): string {
  let label = (charset ?? 'utf-8').trim().toLowerCase();
  if (label === 'us-ascii' || label === 'ascii' || label === '') label = 'latin1';
  try {
    return new TextDecoder(label).decode(bytes);
  } catch {
    return new TextDecoder('utf-8').decode(bytes); // unknown charset label
  }
}

/** True unless more than 10% of the characters are control characters other than whitespace. */
function looksLikeText(text: string): boolean {
  if (text.length === 0) return true;
  let bad = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if ((c < 32 && c !== 9 && c !== 10 && c !== 13) || c === 0xfffd) bad++;
  }
  return bad <= text.length * 0.1;
}

/** RFC 2047 encoded words (=?charset?B|Q?text?=) in a header; whitespace between adjacent encoded words dropped. */
export function decodeHeader(value: string): string {
  const re = /=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=/g;
  return value
    .replace(/(\?=)\s+(?==\?)/g, '$1')
    .replace(re, (whole, charset: string, kind: string, data: string) => {
      try {
        const cs = charset.split('*')[0]; // RFC 2231 language suffix
        if (kind.toUpperCase() === 'B') return bytesToText(Buffer.from(data, 'base64'), cs);
        return decodeQuotedPrintable(data.replace(/_/g, ' '), cs);
      } catch {
        return whole;
      }
    });
}

const ENTITIES: Record<string, string> = {
  nbsp: ' ', amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", copy: '\u00a9', reg: '\u00ae',
  trade: '\u2122', mdash: '\u2014', ndash: '\u2013', hellip: '\u2026', rsquo: '\u2019', lsquo: '\u2018',
  rdquo: '\u201d', ldquo: '\u201c', bull: '\u2022', middot: '\u00b7', euro: '\u20ac', pound: '\u00a3',
};

/** Crude HTML to text: drops head/script/style/comments and tags, breaks lines at block tags, decodes common entities. */
export function htmlToText(html: string): string {
  return html
    .replace(/<!--[\s\S]*?-->/g, ' ')
    .replace(/<(script|style|head|title)\b[\s\S]*?<\/\1\s*>/gi, ' ')
    .replace(/<br\b[^>]*>/gi, '\n')
    .replace(/<\/?(p|div|tr|table|li|ul|ol|h[1-6]|blockquote|center|hr)\b[^>]*>/gi, '\n')
    .replace(/<[^>]*>/g, ' ')
    .replace(/<[^>]*$/, ' ') // an unclosed tag at the very end
    .replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);?/gi, (whole, e: string) => {
      if (e[0] === '#') {
        const code = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
        return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
      }
      return ENTITIES[e.toLowerCase()] ?? whole;
    })
    .replace(/[ \t\u00a0]+/g, ' ')
    .replace(/^ +/gm, '');
}

/** Unix newlines, no trailing spaces, at most one blank line in a row, trimmed. */
function tidy(text: string): string {
  return text
    .replace(/\r\n?/g, '\n')
    .replace(/[ \t]+$/gm, '')
    .replace(/^[ \t]+$/gm, '')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

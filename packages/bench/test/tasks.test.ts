import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  BROWN_GENRES,
  BROWN_GENRE_LETTERS,
  BROWN_SHORT_NAMES,
  brownDir,
  brownSplit,
  countBy,
  countByGenre,
  dedupeSpam,
  detokenizeBrown,
  loadBrown,
  loadSpam,
  parseEmail,
  spamSplit,
  splitTagged,
  truncate,
  type BrownDoc,
  type SpamExample,
} from '../src/index.js';

const ids = (docs: readonly { id: string }[]) => docs.map((d) => d.id);

describe('Brown corpus', () => {
  let docs: BrownDoc[];
  before(() => {
    docs = loadBrown();
  });

  // The first paragraphs of ca01, as the tagged file has them:
  //   \tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ... produced/vbd ``/`` no/at
  //   evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.
  //   (two blank lines)
  //   \tThe/at jury/nn further/rbr said/vbd ... Committee/nn-tl ,/, which/wdt ... ``/`` deserves/vbz ...
  //   City/nn-tl of/in-tl Atlanta/np-tl ''/'' for/in ... conducted/vbn ./.
  const CA01_START =
    'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.\n' +
    '\n' +
    'The jury further said in term-end presentments that the City Executive Committee, which had over-all charge of the election, "deserves the praise and thanks of the City of Atlanta" for the manner in which the election was conducted.';

  test('ca01: the first two paragraphs of the raw file detokenise exactly', () => {
    const raw = readFileSync(join(brownDir(), 'ca01'), 'utf8');
    const firstLines = raw.split('\n').slice(0, 7).join('\n'); // two blank lines, p1, two blank, p2
    assert.equal(detokenizeBrown(firstLines), CA01_START);
    const ca01 = docs.find((d) => d.id === 'ca01')!;
    assert.ok(ca01.text.startsWith(CA01_START + '\n\n'));
    // A headline (-hl tags) keeps its own line; "Jr./np ./." keeps one period;
    // quotes that close before a comma.
    assert.ok(ca01.text.includes('\n\nMerger proposed\nHowever, the jury said it believes "these two offices'));
    assert.ok(ca01.text.includes('won by Mayor-nominate Ivan Allen Jr.\n\n"Only a relative handful of such reports was received", the jury said, "considering'));
  });

  test('cr01: doubled ! and ? written once, parentheses across lines', () => {
    const cr01 = docs.find((d) => d.id === 'cr01')!;
    assert.ok(cr01.text.startsWith('It was among these that Hinkle identified a photograph of Barco!\n' +
      'For it seems that Barco, fancying himself a ladies\' man (and why not, after seven marriages?\n' +
      '), had listed himself for Mormon Beard roles'));
  });

  test('token rules on hand-made lines', () => {
    assert.deepEqual(splitTagged('1-1/2/cd'), { word: '1-1/2', tag: 'cd' });
    assert.deepEqual(splitTagged('//in'), { word: '/', tag: 'in' });
    const cases: [string, string][] = [
      ["\tHe/pps said/vbd :/: '/' You're/ppss+ber my/pp$ man/nn '/' ''/'' ./.", `He said: 'You're my man'".`],
      ['the/at counts/nns //in minute/nn (/( see/vb Table/nn-tl 2/cd )/) ;/. etc./rb ./.', 'the counts/minute (see Table 2); etc.'],
      ['I/ppss do/do n\'t/* know/vb ,/, Sam/np \'s/bez here/rb ?/. ?/.', "I don't know, Sam's here?"],
      ['A/at 50/cd %/nn rise/nn --/-- no/at !/. !/.', 'A 50% rise -- no!'],
    ];
    for (const [raw, want] of cases) assert.equal(detokenizeBrown(raw), want, raw);
    // Lines stay lines; a run of blank lines is one paragraph break; the
    // single-quote state resets at a paragraph break.
    assert.equal(detokenizeBrown('\n\n\ta/at ./.\nb/at ./.\n\n\n\n\tc/at \'/\' d/nn ./.\n\n\te/at \'/\' f/nn'), 'a.\nb.\n\nc \'d.\n\ne \'f');
  });

  test('all 500 files, 15 genres with their manual names, no tags or `` left', () => {
    assert.equal(docs.length, 500);
    assert.deepEqual(countByGenre(docs), {
      a: 44, b: 27, c: 17, d: 17, e: 36, f: 48, g: 75, h: 30, j: 80, k: 29, l: 24, m: 6, n: 29, p: 29, r: 9,
    });
    assert.deepEqual(BROWN_GENRE_LETTERS, ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'j', 'k', 'l', 'm', 'n', 'p', 'r']);
    assert.equal(BROWN_GENRES.a, 'press: reportage');
    assert.equal(BROWN_GENRES.j, 'learned');
    assert.equal(BROWN_GENRES.r, 'humor');
    for (const d of docs) {
      assert.equal(d.genre, d.id[1]);
      assert.equal(d.genreName, BROWN_GENRES[d.genre]);
      assert.ok(d.text.length > 5000, `${d.id} is short: ${d.text.length}`);
      assert.ok(!d.text.includes('``'), d.id);
      assert.ok(!/ [A-Za-z]+\/(at|nn|vbd|in|np|jj)(-tl|-hl)? /.test(d.text), `${d.id} has a tag left`);
    }
    // The package's cats.txt (NLTK's short names) agrees with the letters.
    const cats = readFileSync(join(brownDir(), 'cats.txt'), 'utf8').trim().split('\n');
    assert.equal(cats.length, 500);
    for (const line of cats) {
      const [id, short] = line.trim().split(/\s+/);
      assert.equal(BROWN_SHORT_NAMES[id[1] as keyof typeof BROWN_SHORT_NAMES], short, line);
    }
  });

  test('split by document: every doc exactly once, held-out genre only in heldOut', () => {
    const s = brownSplit(docs, { seed: 1 });
    assert.deepEqual(s.heldOut.genres, ['r']);
    const all = [...s.train, ...s.validation, ...s.test, ...s.heldOut.train, ...s.heldOut.test];
    assert.equal(all.length, docs.length);
    assert.equal(new Set(ids(all)).size, docs.length);
    for (const d of [...s.train, ...s.validation, ...s.test]) assert.notEqual(d.genre, 'r');
    for (const d of [...s.heldOut.train, ...s.heldOut.test]) assert.equal(d.genre, 'r');
    assert.deepEqual([s.train.length, s.validation.length, s.test.length], [389, 51, 51]);
    assert.deepEqual([s.heldOut.train.length, s.heldOut.test.length], [6, 3]);
    // Stratified: every base genre is in train, validation and test.
    for (const g of BROWN_GENRE_LETTERS.filter((x) => x !== 'r')) {
      for (const part of [s.train, s.validation, s.test]) assert.ok(part.some((d) => d.genre === g), g);
    }

    const two = brownSplit(docs, { heldOutGenres: ['m', 'r'], seed: 1, validationFraction: 0.2, testFraction: 0.1 });
    assert.deepEqual(countByGenre([...two.heldOut.train, ...two.heldOut.test]), { m: 6, r: 9 });
    assert.ok(![...two.train, ...two.validation, ...two.test].some((d) => d.genre === 'm' || d.genre === 'r'));
    assert.equal(two.train.length + two.validation.length + two.test.length, 485);
    assert.throws(() => brownSplit(docs, { validationFraction: 0.6, testFraction: 0.5 }), /must be < 1/);
  });

  test('split is deterministic by seed and independent of input order', () => {
    const a = brownSplit(docs, { seed: 7 });
    const b = brownSplit([...docs].reverse(), { seed: 7 });
    for (const k of ['train', 'validation', 'test'] as const) assert.deepEqual(ids(a[k]), ids(b[k]));
    assert.deepEqual(ids(a.heldOut.test), ids(b.heldOut.test));
    const c = brownSplit(docs, { seed: 8 });
    assert.notDeepEqual(ids(a.test).sort(), ids(c.test).sort());
    assert.notDeepEqual(ids(a.validation).sort(), ids(c.validation).sort());
  });
});

describe('SpamAssassin', () => {
  const MAX = 1500;
  let ex: SpamExample[];
  let byId: Map<string, SpamExample>;
  before(() => {
    ex = loadSpam({ maxChars: MAX });
    byId = new Map(ex.map((e) => [e.id, e]));
  });

  test('counts per folder, labels by folder, completions, budget', () => {
    assert.deepEqual(countBy(ex, (e) => e.folder), {
      'easy-ham-1': 2500, 'easy-ham-2': 1400, 'hard-ham-1': 250, 'spam-1': 500, 'spam-2': 1396,
    });
    assert.deepEqual(countBy(ex, (e) => e.label), { ham: 4150, spam: 1896 });
    assert.equal(new Set(ex.map((e) => e.id)).size, ex.length);
    for (const e of ex) {
      assert.equal(e.label, e.folder.startsWith('spam') ? 'spam' : 'ham');
      assert.equal(e.completion, ` ${e.label}`);
      assert.ok(e.prompt.length <= MAX);
      assert.equal(e.prompt, truncate(`${e.subject}\n\n${e.body}`, MAX));
    }
    assert.throws(() => loadSpam({ maxChars: 0 }), /maxChars/);
  });

  test('easy-ham-1/00001: subject, body, label, truncated prompt', () => {
    const e = byId.get('easy-ham-1/00001')!;
    assert.equal(e.subject, 'Re: New Sequences Window');
    assert.equal(e.label, 'ham');
    assert.equal(e.completion, ' ham');
    assert.ok(e.body.startsWith('Date:        Wed, 21 Aug 2002 10:54:46 -0500\n'));
    assert.ok(e.body.includes('For me it is very repeatable... (like every time, without fail).'));
    assert.ok(!e.body.includes('Return-Path:'), 'headers are not part of the body');
    const small = loadSpam({ maxChars: 40 }).find((x) => x.id === 'easy-ham-1/00001')!;
    assert.equal(small.prompt, 'Re: New Sequences Window\n\nDate:        W');
  });

  test('real messages: base64 part, quoted-printable HTML, RFC 2047 subject', () => {
    // spam-1/00187: multipart/mixed, a text/plain part in base64.
    const b64 = byId.get('spam-1/00187')!;
    assert.equal(b64.subject, 'How would you like to create your own DVD library? 4863d-5');
    assert.equal(b64.completion, ' spam');
    assert.ok(b64.body.startsWith("Here's the hottest thing in DVDs. Now you can make a personal backup\ncopy of a DVD right onto CD-R."));
    // hard-ham-1/00007: text/html, ISO-8859-1, quoted-printable ("erm=F6glichen").
    const qp = byId.get('hard-ham-1/00007')!;
    assert.equal(qp.subject, 'F2M - Ihre kostenlose Faxnummer - Newsletter');
    assert.equal(qp.label, 'ham');
    assert.ok(qp.body.includes('Diese ermöglichen den kostenfreien Betrieb des Fax'));
    assert.ok(!/=F6|<\/?(html|body|td|font)\b/i.test(qp.body));
    // easy-ham-1/02434: =?iso-8859-1?Q?Re:_RE:_=5Bzzzzteana=5D_Sitting_Bull_=FCber_alles_=5BLong=5D?=
    assert.equal(byId.get('easy-ham-1/02434')!.subject, 'Re: RE: [zzzzteana] Sitting Bull über alles [Long]');
  });

  test('MIME decoding on built messages', () => {
    const alt = [
      'From someone Mon Jan  1 00:00:00 2002',
      'Subject: =?utf-8?B?Q2Fmw6k=?= =?utf-8?Q?_cr=C3=A8me?=',
      'MIME-Version: 1.0',
      'Content-Type: multipart/alternative;',
      '\tboundary="XX=b"',
      '',
      'preamble',
      '--XX=b',
      'Content-Type: text/plain; charset=iso-8859-1',
      'Content-Transfer-Encoding: quoted-printable',
      '',
      'Caf=E9 cr=E8me, a soft =',
      'break and 1+1=3D2.',
      '--XX=b',
      'Content-Type: text/html',
      '',
      '<p>ignored</p>',
      '--XX=b--',
      'epilogue',
    ].join('\r\n');
    assert.deepEqual(parseEmail(alt), { subject: 'Café crème', body: 'Café crème, a soft break and 1+1=2.' });

    const utf8 = Buffer.from('Grüße aus Köln\nzweite Zeile', 'utf8').toString('base64');
    const mixed = [
      'Subject: mixed',
      'Content-Type: multipart/mixed; boundary=b1',
      '',
      '--b1',
      'Content-Type: text/plain; charset="UTF-8"',
      'Content-Transfer-Encoding: base64',
      '',
      utf8.slice(0, 20),
      utf8.slice(20),
      '--b1',
      'Content-Type: image/gif; name="x.gif"',
      'Content-Transfer-Encoding: base64',
      '',
      'R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=',
      '--b1',
      'Content-Type: text/html; charset=us-ascii',
      '',
      '<html><head><title>t</title><style>p{}</style></head><body>Tom &amp; Jerry&nbsp;&#233;<br>next</body></html>',
      '--b1--',
    ].join('\n');
    assert.deepEqual(parseEmail(mixed), { subject: 'mixed', body: 'Grüße aus Köln\nzweite Zeile\n\nTom & Jerry é\nnext' });

    // Broken base64: the raw body comes back. No subject: ''.
    const broken = 'Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n%%% not base64 %%%\n';
    assert.deepEqual(parseEmail(broken), { subject: '', body: '%%% not base64 %%%' });
    // A multipart whose boundary never occurs: the raw body.
    const noParts = 'Subject: s\nContent-Type: multipart/mixed; boundary=zz\n\njust text\n';
    assert.equal(parseEmail(noParts).body, 'just text');
    assert.equal(truncate('a\u{1F600}b', 2), 'a'); // never half a surrogate pair
  });

  test('split: stratified (label ratio within 2%), every message once, deterministic', () => {
    const s = spamSplit(ex, { seed: 3, validationFraction: 0.1, testFraction: 0.15 });
    const all = [...s.train, ...s.validation, ...s.test];
    assert.equal(all.length, ex.length);
    assert.equal(new Set(ids(all)).size, ex.length);
    // Rounded per folder: 375 + 210 + 38 (37.5) + 75 + 209 (209.4) in test.
    assert.deepEqual([s.train.length, s.validation.length, s.test.length], [4534, 605, 907]);
    const ratio = (xs: SpamExample[]) => xs.filter((e) => e.label === 'spam').length / xs.length;
    const overall = ratio(ex);
    for (const part of [s.train, s.validation, s.test]) {
      assert.ok(Math.abs(ratio(part) - overall) <= 0.02, `spam share ${ratio(part)} vs ${overall}`);
      assert.ok(part.some((e) => e.folder === 'hard-ham-1'));
    }
    assert.ok(Math.abs(s.test.length / ex.length - 0.15) < 0.005);

    const again = spamSplit([...ex].reverse(), { seed: 3, validationFraction: 0.1, testFraction: 0.15 });
    for (const k of ['train', 'validation', 'test'] as const) assert.deepEqual(ids(s[k]), ids(again[k]));
    const other = spamSplit(ex, { seed: 4, validationFraction: 0.1, testFraction: 0.15 });
    assert.notDeepEqual(ids(s.test).sort(), ids(other.test).sort());

    const defaults = spamSplit(ex);
    assert.deepEqual([defaults.train.length, defaults.validation.length, defaults.test.length], [4836, 605, 605]);
  });

  test('dedupeSpam drops exact copies only', () => {
    const d = dedupeSpam(ex);
    assert.equal(d.length, 6046 - 129);
    assert.equal(dedupeSpam(d).length, d.length);
    assert.ok(d.some((e) => e.id === 'easy-ham-1/00317') && !d.some((e) => e.id === 'easy-ham-1/00318'));
  });
});

test('progress bar: proportional, clamped, fixed width', async () => {
  const { progressBar } = await import('../src/index.js');
  assert.equal(progressBar(0), '[....................]');
  assert.equal(progressBar(0.5), '[##########..........]');
  assert.equal(progressBar(1), '[####################]');
  assert.equal(progressBar(7, 4), '[####]', 'clamped above');
  assert.equal(progressBar(NaN, 4), '[....]', 'a NaN fraction shows no progress');
});

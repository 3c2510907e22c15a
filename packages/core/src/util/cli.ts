// Command-line parsing shared by the benchmark scripts and the CLI: node's
// parseArgs, plus the conventions every tunebench command follows (a
// leading `--` from `pnpm x -- ...` is dropped; an unknown option exits 2
// with a pointer to --help; --help prints the text and exits 0).
import { type ParseArgsConfig, parseArgs } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

export type CliValues<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: false; strict: true }>>['values'];

export function parseCli<O extends Options>(options: O, help: string, argv = process.argv.slice(2)): CliValues<O> {
  const args = argv[0] === '--' ? argv.slice(1) : argv;
  try {
    const { values } = parseArgs({ args, options, allowPositionals: false, strict: true });
    if ((values as Record<string, unknown>).help) {
      console.log(help);
      process.exit(0);
    }
    return values as CliValues<O>;
  } catch (e) {
    console.error(`${(e as Error).message}\nRun with --help for the options.`);
    process.exit(2);
  }
}

/** An integer option (string from parseArgs) with a default and a minimum; exits 2 naming the option when invalid. */
export function intOption(name: string, value: string | undefined, dflt: number, min = 1): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${name} must be an integer >= ${min}, got '${value}'`);
    process.exit(2);
  }
  return n;
}

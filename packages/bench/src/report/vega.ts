// vega-lite -> vega -> SVG for report.html (html.ts): the shared chart
// config and panel sizes, the headless render with page-unique SVG ids, and
// the small spec helpers every chart uses (panel grid, run axis).
import type { TopLevelSpec } from 'vega-lite';

export type Spec = Record<string, unknown>;

const VL_CONFIG = {
  font: 'sans-serif',
  background: 'white',
  view: { stroke: '#ddd' },
  // Text is measured by estimate in Node (no canvas), which runs wide: generous limits.
  axis: { labelFontSize: 11, titleFontSize: 11, labelLimit: 240 },
  // The top label inside the plot, and the title no taller than the plot, so
  // that nothing sticks out above a panel and every panel's title sits at the
  // same height.
  axisY: { labelFlush: true, titleLimit: 240 },
  legend: { labelFontSize: 11, titleFontSize: 11, labelLimit: 280 },
  title: { fontSize: 13, anchor: 'start', frame: 'group' },
};

export const PANEL_WIDTH = 320;
export const PANEL_HEIGHT = 240;

/** Renders a vega-lite spec to an SVG string. The SVG's ids (clip paths,
 * gradients) become `<idPrefix>-1`, `-2`, ...: unique within the page (two
 * inline SVGs sharing an id would clip each other) and the same every render. */
export async function vegaLiteToSvg(spec: Spec, idPrefix: string): Promise<string> {
  // Loaded on first use (~150 ms), so importing the package stays cheap.
  const [vega, { compile }] = await Promise.all([import('vega'), import('vega-lite')]);
  const compiled = compile({ config: VL_CONFIG, ...spec } as unknown as TopLevelSpec, { logger: vega.logger(vega.Error) }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Error });
  try {
    const svg = await view.toSVG();
    return cleanSvg(svg, idPrefix);
  } finally {
    view.finalize();
  }
}

function cleanSvg(svg: string, idPrefix: string): string {
  // Renumber ids in order of appearance: vega's counter runs on across
  // renders, and the page must come out the same every time.
  const ids = new Map<string, string>();
  for (const m of svg.matchAll(/\bid="([^"]+)"/g)) if (!ids.has(m[1])) ids.set(m[1], `${idPrefix}-${ids.size + 1}`);
  const rename = (id: string) => ids.get(id) ?? id;
  let out = svg.replace(/\bid="([^"]+)"|url\(#([^)"]+)\)|href="#([^"]+)"/g, (_m, id?: string, url?: string, href?: string) =>
    id !== undefined ? `id="${rename(id)}"` : url !== undefined ? `url(#${rename(url)})` : `href="#${rename(href!)}"`);
  // vega declares the xlink namespace on every SVG; drop it when unused so the
  // only URL on the page is the SVG namespace itself.
  if (!/\bxlink:/.test(out.replace(/\sxmlns:xlink="[^"]*"/, ''))) out = out.replace(/\sxmlns:xlink="[^"]*"/, '');
  return out;
}

export function concat(panels: Spec[], resolveColor: 'shared' | 'independent'): Spec {
  return { concat: panels, columns: 2, spacing: 40, resolve: { scale: { color: resolveColor } } };
}

export function xRun(order: string[]): Spec {
  return { field: 'run', type: 'nominal', sort: order, title: null, axis: { labelAngle: -30 } };
}

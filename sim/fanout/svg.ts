/**
 * The warm-nodes-over-time plot as a small SVG. Hand-written: one chart of step lines with a
 * log time axis is sixty lines, not worth a plotting dependency (and a PNG encoder) for a sim.
 * Time is logarithmic because the strategies differ by orders of magnitude (a star at 1,000
 * nodes takes ~1,000× longer than one node alone).
 */
export interface Curve {
  label: string;
  /** (seconds, nodes warm), time ascending. */
  points: readonly (readonly [number, number])[];
}

const COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

export function warmCurvesSvg(title: string, curves: readonly Curve[], totalNodes: number): string {
  const width = 1000;
  const height = 420;
  const left = 60;
  const right = 330;
  const top = 40;
  const bottom = 50;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const times = curves.flatMap((curve) => curve.points.map(([t]) => t)).filter((t) => t > 0);
  const minT = 10 ** Math.floor(Math.log10(Math.min(...times, 1)));
  const maxT = 10 ** Math.ceil(Math.log10(Math.max(...times, minT * 10)));
  const x = (t: number) => left + (plotW * Math.log10(Math.max(t, minT) / minT)) / Math.log10(maxT / minT);
  const y = (count: number) => top + plotH - (plotH * count) / Math.max(1, totalNodes);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="22" font-size="14">${escapeXml(title)}</text>`,
    `<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="black"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="black"/>`,
    `<text x="${left + plotW / 2}" y="${height - 12}" text-anchor="middle">seconds (log scale)</text>`,
    `<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle">nodes warm</text>`,
  ];
  for (let t = minT; t <= maxT * 1.0001; t *= 10) {
    parts.push(
      `<line x1="${x(t).toFixed(1)}" y1="${top}" x2="${x(t).toFixed(1)}" y2="${top + plotH}" stroke="#ddd"/>`,
      `<text x="${x(t).toFixed(1)}" y="${top + plotH + 16}" text-anchor="middle">${t >= 1 ? t.toFixed(0) : t}</text>`,
    );
  }
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const count = Math.round(totalNodes * fraction);
    parts.push(`<text x="${left - 6}" y="${(y(count) + 4).toFixed(1)}" text-anchor="end">${count}</text>`);
  }
  for (const [i, curve] of curves.entries()) {
    const colour = COLOURS[i % COLOURS.length];
    // A step line: the count holds until the next node becomes warm. Points closer than half a
    // pixel apart are merged (keeping the last count), so 10,000 nodes do not mean 20,000 points.
    const path: string[] = [];
    let previous = 0;
    let pending: [number, number] | undefined;
    const flush = () => {
      if (!pending) return;
      const [px, count] = pending;
      path.push(`${px.toFixed(1)},${y(previous).toFixed(1)}`, `${px.toFixed(1)},${y(count).toFixed(1)}`);
      previous = count;
      pending = undefined;
    };
    for (const [t, count] of curve.points) {
      if (pending && x(t) - pending[0] >= 0.5) flush();
      pending = [pending?.[0] ?? x(t), count];
    }
    flush();
    parts.push(
      `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${path.join(" ")}"><title>${escapeXml(curve.label)}</title></polyline>`,
      `<line x1="${left + plotW + 12}" y1="${top + 10 + i * 20}" x2="${left + plotW + 32}" y2="${top + 10 + i * 20}" stroke="${colour}" stroke-width="2"/>`,
      `<text x="${left + plotW + 38}" y="${top + 14 + i * 20}">${escapeXml(curve.label)}</text>`,
    );
  }
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

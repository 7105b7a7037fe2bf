// Tokens and cost of model calls as the list pages say them: short enough to read at a glance (`1.2k`, `$0.0042`,
// `$1.27`), with the exact figures left to tooltips. A cost is always an estimate (the viewer's price table).

const SUFFIXES = [[1e9, "B"], [1e6, "M"], [1e3, "k"]];

/** A count of tokens: `812`, `1.2k`, `45k`, `3.4M`; "–" for a missing one. */
export function formatTokens(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  for (const [size, suffix] of SUFFIXES) {
    if (Math.abs(n) >= size * 0.9995) { // 999,600 reads as 1M, not 1000k
      const scaled = n / size;
      const digits = Math.abs(scaled) < 9.95 ? 1 : 0;
      return `${Number(scaled.toFixed(digits))}${suffix}`;
    }
  }
  return String(Math.round(n));
}

/** A whole count with thousands separators, for tooltips: `1,200`. */
export function formatExact(n) {
  return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
}

/** USD: two significant digits under a dollar (`$0.0042`, `$0.42`), cents above (`$1.27`, `$1,234.50`). */
export function formatUsd(usd) {
  if (usd === null || usd === undefined || !Number.isFinite(usd)) return "–";
  if (usd === 0) return "$0";
  if (usd < 1e-6) return "<$0.000001";
  const rounded = usd >= 1 ? usd : Number(usd.toPrecision(2)); // 0.996 rounds up to a dollar
  if (rounded >= 1) return `$${rounded.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  const text = String(rounded); // under a dollar and over 1e-6: never in exponent form
  return `$${text.length - text.indexOf(".") - 1 < 2 ? rounded.toFixed(2) : text}`;
}

/** A cost as a page shows it: `~$0.0042` when it is an estimate (as the viewer's always are). */
export function formatCost(usd, estimate = true) {
  const text = formatUsd(usd);
  return estimate && text !== "–" ? `~${text}` : text;
}

function plural(n, word) {
  return `${formatExact(n)} ${word}${n === 1 ? "" : "s"}`;
}

/** The tooltip of tokens: `1,200 input → 95 output tokens in 2 model calls`. */
export function tokensTitle(input, output, calls) {
  return `${formatExact(input || 0)} input → ${formatExact(output || 0)} output tokens in ${plural(calls || 0, "model call")}`;
}

/**
 * The tooltip of a cost: what it is (an estimate from the viewer's price table; the API does not say the table's
 * date) and which calls it leaves out (`unpriced`: models the table has no price for, or calls without token counts).
 */
export function costTitle(usd, unpriced) {
  const parts = [];
  if (usd !== null && usd !== undefined && Number.isFinite(usd)) {
    parts.push(`$${Number(usd.toPrecision(4))}: an estimate from the viewer's price table`);
  } else {
    parts.push("no estimate");
  }
  if (unpriced) parts.push(`${plural(unpriced, "call")} without a price (model not in the table, or no token counts), not counted`);
  return parts.join("; ");
}

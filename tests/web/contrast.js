/*
 * WCAG 2.x contrast of every visible text element matching a selector against its effective
 * background (the first ancestor with an opaque background colour). Large text (>= 24 px, or
 * >= 18.66 px bold) needs 3:1, other text 4.5:1. Disabled controls are exempt, as WCAG says.
 * Evaluated by Playwright: page.evaluate(source, selector) returns [{text, cls, ratio, need}].
 */
(selector) => {
  function parse(c) { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; }
  function lum(c) { const f = v => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); }
  function background(el) { for (let n = el; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor); if (c && c.a >= 0.99) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; }
  const out = [];
  document.querySelectorAll(selector).forEach(el => {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    if (!own || el.closest('[hidden], .sr-only, svg') || style.visibility === 'hidden' || box.width === 0) return;
    if (el.closest(':disabled')) return;
    const fg = parse(style.color), bg = background(el);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    out.push({text: el.textContent.trim().slice(0, 40), cls: el.className, ratio: Math.round(ratio * 100) / 100, need});
  });
  return out;
}

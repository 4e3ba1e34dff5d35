/*
 * The AI findings drawn over a viewport: an SVG layer in the viewport element, redrawn whenever the
 * image is rendered (so it follows zoom, pan, rotation and flips). Points are in pixels of the source
 * image with the top-left corner of the first pixel at (0, 0), the convention of covidet's boxes, of
 * the SR's SCOORD and of Cornerstone's imageToWorldCoords.
 */
import { Enums, utilities } from "@cornerstonejs/core";

const SVG = "http://www.w3.org/2000/svg";

export class FindingsOverlay {
  constructor(viewport, imageId) {
    this.viewport = viewport;
    this.imageId = imageId;
    this.findings = [];
    this.visible = true;
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("class", "ai-overlay");
    this.svg.setAttribute("aria-hidden", "true");
    viewport.element.appendChild(this.svg);
    viewport.element.addEventListener(Enums.Events.IMAGE_RENDERED, () => this.draw());
  }

  setFindings(findings) {
    this.findings = findings;
    this.draw();
  }

  setVisible(visible) {
    this.visible = visible;
    this.svg.style.display = visible ? "" : "none";
    this.draw();
  }

  toCanvas([x, y]) {
    return this.viewport.worldToCanvas(utilities.imageToWorldCoords(this.imageId, [x, y]));
  }

  draw() {
    while (this.svg.firstChild) this.svg.removeChild(this.svg.firstChild);
    if (!this.visible) return;
    const { clientWidth, clientHeight } = this.viewport.element;
    this.svg.setAttribute("viewBox", `0 0 ${clientWidth} ${clientHeight}`);
    this.svg.setAttribute("width", clientWidth);
    this.svg.setAttribute("height", clientHeight);
    this.findings.forEach((finding, index) => {
      const points = finding.points.map((p) => this.toCanvas(p));
      const group = document.createElementNS(SVG, "g");
      group.setAttribute("class", `finding label-${finding.label}`);
      group.dataset.index = String(index);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" "));
      group.appendChild(line);
      const top = points.reduce((a, b) => (b[1] < a[1] ? b : a));
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", String(top[0] + 2));
      text.setAttribute("y", String(Math.max(12, top[1] - 4)));
      const score = finding.score === null || finding.score === undefined ? "" : ` ${finding.score.toFixed(2)}`;
      text.textContent = `${finding.label}${score}`;
      group.appendChild(text);
      this.svg.appendChild(group);
    });
  }
}

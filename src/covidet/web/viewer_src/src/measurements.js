/*
 * Measurements and the radiologist's boxes of the current image: Length, Angle, Ellipse (statistics)
 * and Rectangle annotations listed under the image; rectangles saved as "add" actions of the user's
 * draft review (review.js). Annotations are looked up by image (an X-ray without a Frame of Reference
 * UID has no annotation group), and their events come from Cornerstone's eventTarget.
 */
import { Enums, eventTarget, utilities } from "@cornerstonejs/core";
import {
  AngleTool,
  EllipticalROITool,
  Enums as ToolEnums,
  LengthTool,
  RectangleROITool,
  annotation,
} from "@cornerstonejs/tools";

import { value } from "./dicomweb.js";
import { saveBoxes } from "./review.js";

export const MEASURE_TOOLS = [LengthTool, AngleTool, EllipticalROITool, RectangleROITool];

const $ = (id) => document.getElementById(id);
const savedBoxes = new Set(); // annotation UIDs already saved to the review
let view = null; // { current: () => the shown image, viewport: () => its viewport, draftIds }

const fixed = (number, digits = 1) => (Number.isFinite(number) ? number.toFixed(digits) : "–");

function describe(item, current) {
  const name = item.metadata.toolName;
  const stats = Object.values(item.data.cachedStats || {})[0] || {};
  const unit = stats.unit || "px";
  if (name === LengthTool.toolName && stats.length !== undefined) return `Length ${fixed(stats.length)} ${unit}`;
  if (name === AngleTool.toolName && stats.angle !== undefined) return `Angle ${fixed(stats.angle)}°`;
  if (name === EllipticalROITool.toolName && stats.mean !== undefined) {
    return `Ellipse mean ${fixed(stats.mean)}, SD ${fixed(stats.stdDev)}, area ${fixed(stats.area)} ${stats.areaUnit || ""}`;
  }
  if (name === RectangleROITool.toolName) {
    const box = boxOf(item, current);
    return `Box [${box.map((v) => Math.round(v)).join(", ")}]${savedBoxes.has(item.annotationUID) ? " (saved)" : ""}`;
  }
  return name;
}

/** A rectangle annotation as [x1, y1, x2, y2] in pixels of the image, inside the image. */
function boxOf(item, current) {
  const points = item.data.handles.points.map((p) => utilities.worldToImageCoords(current.imageId, p));
  const columns = value(current.instance, "00280011");
  const rows = value(current.instance, "00280010");
  const xs = points.map((p) => Math.min(columns, Math.max(0, p[0])));
  const ys = points.map((p) => Math.min(rows, Math.max(0, p[1])));
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}

function annotationsOfMain() {
  const current = view && view.current();
  if (!current) return [];
  const names = new Set(MEASURE_TOOLS.map((tool) => tool.toolName));
  return annotation.state
    .getAllAnnotations()
    .filter((item) => names.has(item.metadata.toolName) && item.metadata.referencedImageId === current.imageId);
}

/** Redraw the list of measurements and the save button's state. */
export function listMeasurements() {
  const current = view && view.current();
  const items = annotationsOfMain();
  $("measurements").replaceChildren(
    ...items.map((item) => {
      const li = document.createElement("li");
      li.dataset.tool = item.metadata.toolName;
      li.textContent = describe(item, current);
      return li;
    }),
  );
  const unsaved = items.filter(
    (item) => item.metadata.toolName === RectangleROITool.toolName && !savedBoxes.has(item.annotationUID),
  );
  $("save-boxes").disabled = unsaved.length === 0;
  $("save-boxes").textContent = `Save ${unsaved.length} box(es) to your review`;
}

/** Wire the list, Clear all and Save boxes to the page; ``context`` gives the shown image. */
export function wireMeasurements(context) {
  view = context;
  const { Events } = ToolEnums;
  // Annotation events go to Cornerstone's eventTarget, not to the viewport element.
  for (const name of [Events.ANNOTATION_COMPLETED, Events.ANNOTATION_MODIFIED, Events.ANNOTATION_REMOVED]) {
    eventTarget.addEventListener(name, () => listMeasurements());
  }
  $("vp-main").addEventListener(Enums.Events.IMAGE_RENDERED, () => listMeasurements());
  $("clear-measurements").addEventListener("click", () => {
    for (const item of annotationsOfMain()) annotation.state.removeAnnotation(item.annotationUID);
    view.viewport().render();
    listMeasurements();
  });
  $("save-boxes").addEventListener("click", async () => {
    const message = $("review-message");
    const pending = annotationsOfMain().filter(
      (item) => item.metadata.toolName === RectangleROITool.toolName && !savedBoxes.has(item.annotationUID),
    );
    const label = $("box-label").value;
    const current = view.current();
    const { draftIds } = view;
    try {
      const review = await saveBoxes(
        current.image.imageId,
        draftIds[current.image.imageId],
        pending.map((item) => ({ label, box: boxOf(item, current) })),
      );
      draftIds[current.image.imageId] = review.id;
      pending.forEach((item) => savedBoxes.add(item.annotationUID));
      message.textContent = `Saved to your draft review ${review.id} (${review.findings.length} action(s)); sign it on the review page.`;
      message.dataset.reviewId = String(review.id);
    } catch (error) {
      message.textContent = `Not saved: ${error.message}`;
    }
    listMeasurements();
  });
}

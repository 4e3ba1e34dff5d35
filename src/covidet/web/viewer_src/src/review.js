/*
 * The radiologist's rectangles as "add" actions of their review, through covidet's reviews API
 * (/api/v1/reviews, see docs/api.md): the user's draft of the image is extended (its other actions are
 * kept as they are), or a new draft is started. Signing stays on the review page (/images/{id}).
 * Requests go through the web app's own helper (static/common.js), CSRF token included.
 */

// The page's shared helper (static/common.js, loaded by base.html before this module): the JSON API
// with the session cookie, and the CSRF token in X-CSRF-Token on unsafe methods.
const api = (method, url, body) => window.covidet.api(method, url, body);

/** A stored action as the API takes it back (ReviewFindingIn): only the fields its action uses. */
function asInput(f) {
  if (f.action === "add") return { action: "add", label: f.label, box: f.box };
  if (f.action === "relabel") {
    const out = { action: "relabel", source_finding_id: f.source_finding_id, label: f.label };
    if (f.box) out.box = f.box;
    return out;
  }
  return { action: f.action, source_finding_id: f.source_finding_id };
}

/**
 * Save ``boxes`` ([{ label, box: [x1, y1, x2, y2] }]) as add actions of the user's draft of image
 * ``imageId`` (``draftId`` when one exists). Resolves to the saved review (ReviewPublic).
 */
export async function saveBoxes(imageId, draftId, boxes) {
  const adds = boxes.map((b) => ({ action: "add", label: b.label, box: b.box }));
  if (draftId) {
    const draft = await api("GET", `/api/v1/reviews/${draftId}`);
    if (draft.status === "draft") {
      const findings = draft.findings.map(asInput).concat(adds);
      return api("PATCH", `/api/v1/reviews/${draftId}`, { findings });
    }
  }
  return api("POST", "/api/v1/reviews", { image_id: imageId, findings: adds });
}

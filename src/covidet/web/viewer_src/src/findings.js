/*
 * The AI findings of an X-ray, for the overlay: from covidet's AI SR (a TID 1500 Measurement Report,
 * see docs/dicom-sr.md) read over WADO-RS as DICOM JSON, else from the JSON API
 * (/api/v1/images/{id}/findings). Each finding: { label, meaning, score, points: [[x, y], ...] } in
 * pixels of the source image (top-left origin, as the SR's SCOORD and the API's boxes are).
 */
import { getJson, seriesMetadata, value, values } from "./dicomweb.js";

const IMAGE_REGION = "111030"; // (111030, DCM, "Image Region"): the SCOORD of a planar ROI group
const FINDING = "121071"; // (121071, DCM, "Finding"): the class of the box
const CERTAINTY = "111012"; // (111012, DCM, "Certainty of Finding"): the detector's score
const MEASUREMENT_GROUP = "125007"; // (125007, DCM, "Measurement Group")

function conceptCode(item) {
  const name = value(item, "0040A043"); // Concept Name Code Sequence
  return name ? value(name, "00080100") : undefined;
}

/** The findings of one SR instance (DICOM JSON), walking its content tree. */
export function findingsFromSr(sr, labelsByCode) {
  const found = [];
  function walk(items) {
    for (const item of items) {
      const children = values(item, "0040A730"); // Content Sequence
      if (value(item, "0040A040") === "CONTAINER" && conceptCode(item) === MEASUREMENT_GROUP) {
        const group = { label: null, meaning: null, score: null, points: null };
        for (const child of children) {
          const code = conceptCode(child);
          const type = value(child, "0040A040");
          if (type === "SCOORD" && code === IMAGE_REGION) {
            const data = values(child, "00700022"); // Graphic Data: column, row pairs
            group.points = [];
            for (let i = 0; i + 1 < data.length; i += 2) group.points.push([data[i], data[i + 1]]);
          } else if (type === "CODE" && code === FINDING) {
            const concept = value(child, "0040A168"); // Concept Code Sequence
            group.meaning = value(concept, "00080104") || null;
            group.label = labelsByCode[value(concept, "00080100")] || group.meaning;
          } else if (type === "NUM" && code === CERTAINTY) {
            const measured = value(child, "0040A300"); // Measured Value Sequence
            const number = Number(value(measured, "0040A30A"));
            group.score = Number.isFinite(number) ? number : null;
          }
        }
        if (group.points && group.points.length >= 2) found.push(group);
      }
      walk(children);
    }
  }
  walk(values(sr, "0040A730"));
  return found;
}

/**
 * The findings of an image: its AI SR when the study holds one and WADO-RS serves it, else the JSON
 * API. Resolves to { source, findings, note }.
 */
export async function loadFindings(state, image) {
  const sr = image.aiSr;
  if (sr) {
    try {
      const instances = await seriesMetadata(state.wadoRoot, state.study.uid, sr.seriesUid);
      const instance = instances.find((i) => value(i, "00080018") === sr.sopUid) || instances[0];
      return {
        source: "AI SR (WADO-RS)",
        findings: findingsFromSr(instance, state.labelsByCode),
        note: "",
      };
    } catch (error) {
      console.warn("AI SR not readable over WADO-RS, using the JSON API", error);
    }
  }
  const answer = await getJson(`/api/v1/images/${image.imageId}/findings`, "application/json");
  return {
    source: "JSON API",
    findings: (answer.findings || []).map((f) => {
      const [x1, y1, x2, y2] = f.box;
      return {
        label: f.label,
        meaning: f.label,
        score: f.score,
        points: [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]],
      };
    }),
    note: sr ? "" : "No AI SR in this study yet.",
    model: answer.model_name ? `${answer.model_name} ${answer.model_version}` : "",
  };
}

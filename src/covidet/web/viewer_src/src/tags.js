/*
 * The DICOM tag panel: the instance's WADO-RS metadata (DICOM JSON) as a table of tag, keyword, VR and
 * value, sequences nested, bulk data (pixels) named but not shown; a filter box narrows the rows.
 * Keywords come from dcmjs's copy of the PS3.6 dictionary.
 */
import dcmjs from "dcmjs";

const { DicomMetaDictionary } = dcmjs.data;
const MAX_DEPTH = 4;
const MAX_TEXT = 200;

function keyword(tag) {
  const entry = DicomMetaDictionary.dictionary[DicomMetaDictionary.punctuateTag(tag)];
  if (entry) return entry.name;
  return parseInt(tag.slice(0, 4), 16) % 2 === 1 ? "(private)" : "";
}

function show(element) {
  if (element.BulkDataURI || element.InlineBinary) return "(bulk data)";
  const list = element.Value || [];
  const text = list
    .map((v) => {
      if (v && typeof v === "object") return v.Alphabetic ?? JSON.stringify(v);
      return String(v);
    })
    .join("\\");
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT)}…` : text;
}

function rows(dataset, depth, out) {
  for (const tag of Object.keys(dataset).sort()) {
    const element = dataset[tag];
    const tr = document.createElement("tr");
    tr.dataset.tag = tag;
    const cells = [
      `(${tag.slice(0, 4)},${tag.slice(4)})`,
      keyword(tag),
      element.vr || "",
      element.vr === "SQ" ? `${(element.Value || []).length} item(s)` : show(element),
    ];
    cells.forEach((text, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      td.textContent = text;
      if (i === 0) td.style.paddingLeft = `${0.3 + depth * 1.2}em`;
      tr.appendChild(td);
    });
    out.appendChild(tr);
    if (element.vr === "SQ" && depth < MAX_DEPTH) {
      for (const item of element.Value || []) rows(item, depth + 1, out);
    }
  }
}

/** Fill ``table`` (its tbody) with ``dataset`` and wire ``filter`` (an input) to narrow it. */
export function renderTags(table, filter, dataset) {
  const body = table.tBodies[0] || table.appendChild(document.createElement("tbody"));
  body.replaceChildren();
  rows(dataset, 0, body);
  filter.oninput = () => {
    const needle = filter.value.trim().toLowerCase();
    for (const tr of body.rows) {
      tr.hidden = needle !== "" && !tr.textContent.toLowerCase().includes(needle);
    }
  };
}

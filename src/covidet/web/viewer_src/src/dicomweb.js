/*
 * covidet's DICOMweb (PS3.18) as the viewer uses it: WADO-RS series metadata (DICOM JSON, PS3.18 F.2)
 * and frames, under the root the page names (normally /dicom-web), with the session cookie.
 */

/** Tag value of a DICOM JSON object: the first Value, or undefined. */
export function value(dataset, tag) {
  const element = dataset && dataset[tag];
  return element && Array.isArray(element.Value) ? element.Value[0] : undefined;
}

/** All Values of a tag (an empty list when absent). */
export function values(dataset, tag) {
  const element = dataset && dataset[tag];
  return element && Array.isArray(element.Value) ? element.Value : [];
}

/** GET a DICOM JSON document; rejects with an Error naming the URL and the status. */
export async function getJson(url, accept = "application/dicom+json") {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: accept } });
  if (response.status === 401) {
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
    throw new Error("signed out");
  }
  if (!response.ok) {
    const error = new Error(`${url}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

/** WADO-RS metadata of one series: a list of DICOM JSON instances. */
export function seriesMetadata(root, studyUid, seriesUid) {
  return getJson(`${root}/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/metadata`);
}

/** The wadors: image id of frame 1 of an instance (what the dicom-image-loader fetches). */
export function frameImageId(root, studyUid, seriesUid, sopUid) {
  const base = new URL(root, window.location.origin).toString().replace(/\/$/, "");
  return (
    `wadors:${base}/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}` +
    `/instances/${encodeURIComponent(sopUid)}/frames/1`
  );
}

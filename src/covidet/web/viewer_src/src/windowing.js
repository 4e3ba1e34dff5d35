/*
 * Window/level presets in the image's modality units (after the Modality LUT / rescale), as CT
 * readers know them. An 8-bit image has no such units: there the same windows are scaled from the CT
 * range -1024..3071 onto 0..255, and the page says so.
 */
export const PRESETS = [
  { id: "lung", name: "Lung", width: 1500, center: -600 },
  { id: "mediastinum", name: "Mediastinum", width: 350, center: 50 },
  { id: "bone", name: "Bone", width: 2000, center: 300 },
];

const CT_LOW = -1024;
const CT_SPAN = 4096;

/** The preset's { width, center } for an image whose stored values have ``bitsStored`` bits. */
export function presetWindow(preset, bitsStored) {
  if (bitsStored > 8) return { width: preset.width, center: preset.center };
  const scale = 256 / CT_SPAN;
  return { width: preset.width * scale, center: (preset.center - CT_LOW) * scale };
}

/** DICOM PS3.3 C.11.2.1.2.1 linear window as Cornerstone's VOI range { lower, upper }. */
export function voiRange(width, center) {
  const w = Math.max(1, width);
  return { lower: center - 0.5 - (w - 1) / 2, upper: center - 0.5 + (w - 1) / 2 };
}

/** The { width, center } of a VOI range (inverse of voiRange). */
export function windowOf(range) {
  const width = range.upper - range.lower + 1;
  return { width, center: (range.upper + range.lower) / 2 + 0.5 };
}

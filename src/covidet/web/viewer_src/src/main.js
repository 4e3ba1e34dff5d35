/*
 * covidet's diagnostic viewer: Cornerstone3D stack viewports over covidet's DICOMweb (WADO-RS), at the
 * image's native bit depth. The page (templates/viewer3d.html, covidet.web.viewer_page) embeds the
 * study's instances and the patient's priors as JSON; everything else is fetched here:
 *   - WADO-RS series metadata (DICOM JSON) -> the loader's metadata and the tag panel;
 *   - WADO-RS frames -> pixels, decoded in a web worker (codecs from /static/viewer/codecs/);
 *   - the AI SR (WADO-RS metadata of its series) or the JSON API -> the findings overlay;
 *   - the reviews API <- the radiologist's rectangles as "add" actions of their draft.
 * Status for people and for tests: #viewer-status (data-state "loading" | "ready" | "error").
 */
import {
  Enums,
  RenderingEngine,
  init as coreInit,
  getShouldUseCPURendering,
  metaData,
} from "@cornerstonejs/core";
import {
  Enums as ToolEnums,
  MagnifyTool,
  PanTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
  synchronizers,
} from "@cornerstonejs/tools";
import dicomImageLoader from "@cornerstonejs/dicom-image-loader";

import { frameImageId, seriesMetadata, value } from "./dicomweb.js";
import { loadFindings } from "./findings.js";
import { FindingsOverlay } from "./overlay.js";
import { MEASURE_TOOLS, listMeasurements, wireMeasurements } from "./measurements.js";
import { renderTags } from "./tags.js";
import { PRESETS, presetWindow, voiRange, windowOf } from "./windowing.js";

const state = JSON.parse(document.getElementById("viewer3d-state").textContent);
const $ = (id) => document.getElementById(id);
const ENGINE_ID = "covidet-viewer";
const GROUP_ID = "covidet-tools";
const MAIN = "main";
const PRIOR = "prior";
const { MouseBindings } = ToolEnums;
const TOOLS = [WindowLevelTool, PanTool, ZoomTool, MagnifyTool, ...MEASURE_TOOLS];
// The tools' own mouse buttons when they are not on the left button.
const RESTING = {
  [PanTool.toolName]: [{ mouseButton: MouseBindings.Auxiliary }],
  [ZoomTool.toolName]: [{ mouseButton: MouseBindings.Secondary }, { mouseButton: MouseBindings.Wheel }],
};

let engine;
let toolGroup;
let zoomPanSync = null;
let primaryTool = WindowLevelTool.toolName;
let current = null; // { image, imageId, instance, bitsStored, overlay }
const draftIds = { ...(state.draftIds || {}) };

function setStatus(kind, text) {
  const status = $("viewer-status");
  status.dataset.state = kind;
  status.textContent = text;
}

function mainViewport() {
  return engine.getViewport(MAIN);
}

// ------------------------------------------------------------------------------------------ set-up

async function setUp() {
  coreInit();
  dicomImageLoader.init({
    maxWebWorkers: Math.max(1, Math.min(2, (navigator.hardwareConcurrency || 2) - 1)),
    wasmBasePath: `${state.staticRoot}codecs/`,
  });
  toolsInit();
  TOOLS.forEach((tool) => addTool(tool));
  engine = new RenderingEngine(ENGINE_ID);
  engine.enableElement({
    viewportId: MAIN,
    type: Enums.ViewportType.STACK,
    element: $("vp-main"),
    defaultOptions: { background: [0, 0, 0] },
  });
  toolGroup = ToolGroupManager.createToolGroup(GROUP_ID);
  TOOLS.forEach((tool) => toolGroup.addTool(tool.toolName));
  toolGroup.addViewport(MAIN, ENGINE_ID);
  for (const tool of TOOLS) toolGroup.setToolPassive(tool.toolName);
  for (const [name, bindings] of Object.entries(RESTING)) toolGroup.setToolActive(name, { bindings });
  setPrimaryTool(WindowLevelTool.toolName);
  trackZoom($("vp-main"), MAIN);
  $("render-mode").textContent = getShouldUseCPURendering()
    ? "CPU rendering (no WebGL in this browser)"
    : "GPU rendering (WebGL)";
  new ResizeObserver(() => engine.resize(true, true)).observe($("viewports"));
}

/** Keep each viewport's zoom in data-zoom (read by people's tools and by the tests). */
function trackZoom(element, viewportId) {
  element.addEventListener(Enums.Events.CAMERA_MODIFIED, () => {
    const viewport = engine.getViewport(viewportId);
    const zoom = viewport ? viewport.getZoom() : undefined;
    if (Number.isFinite(zoom)) element.dataset.zoom = zoom.toFixed(4);
  });
}

function setPrimaryTool(name) {
  const previous = primaryTool;
  if (previous !== name) {
    if (RESTING[previous]) toolGroup.setToolActive(previous, { bindings: RESTING[previous] });
    else toolGroup.setToolPassive(previous);
  }
  const bindings = [{ mouseButton: MouseBindings.Primary }, ...(RESTING[name] || [])];
  toolGroup.setToolActive(name, { bindings });
  primaryTool = name;
  for (const input of document.querySelectorAll('input[name="tool"]')) input.checked = input.value === name;
}

// --------------------------------------------------------------------------------------- loading

/** Load one instance's metadata over WADO-RS and register it for its wadors: image id. */
async function registerInstance(studyUid, image) {
  const instances = await seriesMetadata(state.wadoRoot, studyUid, image.seriesUid);
  const instance = instances.find((i) => value(i, "00080018") === image.sopUid);
  if (!instance) throw new Error(`instance ${image.sopUid} is not in its series' metadata`);
  const imageId = frameImageId(state.wadoRoot, studyUid, image.seriesUid, image.sopUid);
  dicomImageLoader.wadors.metaDataManager.add(imageId, forRendering(instance));
  return { imageId, instance };
}

/**
 * The metadata the loader gets: the instance's, less a Pixel Spacing or Imager Pixel Spacing with a
 * zero or missing value (some CR headers carry 0\\0), which would give the image a degenerate geometry
 * (nothing drawn). Without a usable spacing, lengths and areas are in pixels (the measurement says so).
 */
function forRendering(instance) {
  const copy = { ...instance };
  for (const tag of ["00280030", "00181164"]) {
    const spacing = copy[tag] && copy[tag].Value;
    if (spacing && !(spacing.length === 2 && spacing.every((v) => Number(v) > 0))) delete copy[tag];
  }
  return copy;
}

async function showImage(index) {
  const image = state.images[index];
  setStatus("loading", `Loading image ${image.imageId} over WADO-RS…`);
  const { imageId, instance } = await registerInstance(state.study.uid, image);
  const viewport = mainViewport();
  await viewport.setStack([imageId]);
  const pixel = metaData.get("imagePixelModule", imageId) || {};
  const bitsStored = pixel.bitsStored || value(instance, "00280101") || 8;
  if (current && current.overlay) current.overlay.svg.remove();
  current = { image, imageId, instance, bitsStored, overlay: new FindingsOverlay(viewport, imageId) };
  // What Reset comes back to: the header's window and the photometric's inversion (MONOCHROME1
  // starts inverted). Cornerstone's own resetProperties (5.14, GPU path) restores the transfer
  // function of before the inversion while keeping invert on, so a MONOCHROME1 image came back
  // un-inverted: the viewer keeps its own initial state instead.
  const initial = viewport.getProperties();
  current.initial = { voiRange: { ...initial.voiRange }, invert: Boolean(initial.invert) };
  viewport.render();
  renderTags($("tags"), $("tags-filter"), instance);
  describeImage(instance, pixel, bitsStored);
  showWindow();
  $("review-link").href = `/images/${image.imageId}`;
  setStatus(
    "ready",
    `Image ${image.imageId}: ${value(instance, "00280011")} × ${value(instance, "00280010")} px, ` +
      `${bitsStored}-bit ${pixel.photometricInterpretation || ""}.`,
  );
  loadAi(image).catch((error) => {
    $("ai-source").textContent = `AI findings could not be loaded: ${error.message}`;
  });
  listMeasurements();
}

function describeImage(instance, pixel, bitsStored) {
  const facts = {
    "fact-modality": value(instance, "00080060") || "–",
    "fact-bits": `${bitsStored} of ${pixel.bitsAllocated || value(instance, "00280100") || "?"}`,
    "fact-photometric": pixel.photometricInterpretation || value(instance, "00280004") || "–",
    "fact-transfer": value(instance, "00020010") || "(as served)",
  };
  for (const [id, text] of Object.entries(facts)) $(id).textContent = String(text);
  $("preset-note").textContent =
    bitsStored > 8
      ? "Presets are applied in the image's own modality units (for CR/DX these are detector values, " +
        "not Hounsfield units)."
      : "8-bit image: the presets are the CT windows scaled from −1024…3071 onto 0…255.";
}

async function loadAi(image) {
  const { source, findings, note, model } = await loadFindings(state, image);
  current.overlay.setFindings(findings);
  current.overlay.setVisible($("show-ai").checked);
  $("ai-source").textContent =
    `${findings.length} finding(s) from the ${source}${model ? ` (${model})` : ""}. ${note}`.trim();
  const list = $("ai-findings");
  list.replaceChildren(
    ...findings.map((f) => {
      const li = document.createElement("li");
      li.className = `finding label-${f.label}`;
      const score = f.score === null || f.score === undefined ? "–" : f.score.toFixed(2);
      li.textContent = `${f.label}: detector score ${score}`;
      return li;
    }),
  );
}

// ---------------------------------------------------------------------------------------- window

function showWindow() {
  const viewport = mainViewport();
  const { voiRange: range, invert } = viewport.getProperties();
  if (range) {
    const { width, center } = windowOf(range);
    $("ww").value = String(Math.round(width));
    $("wc").value = String(Math.round(center));
  }
  // Pressed: inverted relative to how the image is meant to be seen (MONOCHROME1 starts inverted).
  const initialInvert = Boolean(current && current.initial && current.initial.invert);
  $("invert").setAttribute("aria-pressed", String(Boolean(invert) !== initialInvert));
}

function applyWindow(width, center) {
  const viewport = mainViewport();
  viewport.setProperties({ voiRange: voiRange(width, center) });
  viewport.render();
  showWindow();
}

function wireWindowing() {
  const presets = $("presets");
  for (const preset of PRESETS) {
    const button = document.createElement("button");
    button.type = "button";
    button.id = `preset-${preset.id}`;
    button.textContent = `${preset.name} (W${preset.width} L${preset.center})`;
    button.addEventListener("click", () => {
      const { width, center } = presetWindow(preset, current ? current.bitsStored : 16);
      applyWindow(width, center);
    });
    presets.appendChild(button);
  }
  $("window-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const width = Number($("ww").value);
    const center = Number($("wc").value);
    if (Number.isFinite(width) && width >= 1 && Number.isFinite(center)) applyWindow(width, center);
  });
  $("vp-main").addEventListener(Enums.Events.VOI_MODIFIED, showWindow);
}

// ------------------------------------------------------------------------------------ orientation

function wireView() {
  const viewport = () => mainViewport();
  $("invert").addEventListener("click", () => {
    const vp = viewport();
    vp.setProperties({ invert: !vp.getProperties().invert });
    vp.render();
    showWindow();
  });
  $("rotate").addEventListener("click", () => {
    const vp = viewport();
    const rotation = vp.getViewPresentation().rotation || 0;
    vp.setViewPresentation({ rotation: (rotation + 90) % 360 });
    vp.render();
  });
  $("flip-h").addEventListener("click", () => {
    const vp = viewport();
    vp.setViewPresentation({ flipHorizontal: !vp.getViewPresentation().flipHorizontal });
    vp.render();
  });
  $("flip-v").addEventListener("click", () => {
    const vp = viewport();
    vp.setViewPresentation({ flipVertical: !vp.getViewPresentation().flipVertical });
    vp.render();
  });
  const zoomBy = (factor) => {
    const vp = viewport();
    vp.setZoom(vp.getZoom() * factor);
    vp.render();
  };
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("reset").addEventListener("click", () => {
    const vp = viewport();
    vp.resetCamera();
    vp.setProperties({ voiRange: { ...current.initial.voiRange }, invert: current.initial.invert });
    vp.render();
    showWindow();
  });
  // Keys on the focused image: the toolbar's buttons without the mouse.
  const keys = { "+": "zoom-in", "=": "zoom-in", "-": "zoom-out", i: "invert", r: "rotate", h: "flip-h", v: "flip-v", 0: "reset" };
  $("vp-main").addEventListener("keydown", (event) => {
    const target = keys[event.key];
    if (!target || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    $(target).click();
  });
  for (const input of document.querySelectorAll('input[name="tool"]')) {
    input.addEventListener("change", () => input.checked && setPrimaryTool(input.value));
  }
  $("show-ai").addEventListener("change", (event) => {
    if (current) current.overlay.setVisible(event.target.checked);
  });
}

// ----------------------------------------------------------------------------------------- priors

async function showPrior(study, image) {
  const element = $("vp-prior");
  $("prior-pane").hidden = false;
  if (!engine.getViewport(PRIOR)) {
    engine.enableElement({
      viewportId: PRIOR,
      type: Enums.ViewportType.STACK,
      element,
      defaultOptions: { background: [0, 0, 0] },
    });
    toolGroup.addViewport(PRIOR, ENGINE_ID);
    trackZoom(element, PRIOR);
    zoomPanSync = synchronizers.createZoomPanSynchronizer("covidet-zoom-pan");
    zoomPanSync.add({ renderingEngineId: ENGINE_ID, viewportId: MAIN });
    zoomPanSync.add({ renderingEngineId: ENGINE_ID, viewportId: PRIOR });
  }
  engine.resize(true, false); // both panes refit to their new size
  $("prior-title").textContent = `Prior: ${study.date || "date unknown"} ${study.description || ""}`;
  const { imageId } = await registerInstance(study.uid, image);
  const viewport = engine.getViewport(PRIOR);
  await viewport.setStack([imageId]);
  viewport.render();
  $("prior-pane").dataset.state = "ready";
}

function wirePriors() {
  const list = $("priors");
  if (!state.priors.length) return;
  for (const study of state.priors) {
    for (const image of study.images) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "prior-button";
      button.textContent = `${study.date || "no date"} · ${study.description || "study"} · image ${image.imageId}`;
      button.addEventListener("click", () =>
        showPrior(study, image).catch((error) => {
          $("prior-title").textContent = `Prior not loaded: ${error.message}`;
        }),
      );
      const li = document.createElement("li");
      li.appendChild(button);
      list.appendChild(li);
    }
  }
}

// ------------------------------------------------------------------------------------------- main

async function main() {
  try {
    await setUp();
    wireWindowing();
    wireView();
    wireMeasurements({ current: () => current, viewport: mainViewport, draftIds });
    wirePriors();
    const select = $("image-select");
    select.addEventListener("change", () =>
      showImage(Number(select.value)).catch((error) => setStatus("error", error.message)),
    );
    await showImage(state.selected || 0);
  } catch (error) {
    console.error(error);
    setStatus("error", `The image could not be shown: ${error.message}`);
  }
}

main();

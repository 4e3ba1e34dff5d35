/*
 * The viewer: the X-ray on a canvas (windowing, zoom, pan), the detector's boxes in an SVG overlay,
 * and the review form.
 *
 * The canvas and the SVG share one coordinate system, the original image's pixels (the boxes' own
 * units, [x1, y1, x2, y2] from the findings): both sit at natural size inside #stage, and zoom and pan
 * are one CSS transform of #stage, so boxes can never drift from the image.
 *
 * Windowing re-maps the grey levels of the server's default rendering (pixels.png) with the same rule
 * as the API's window_center / window_width: out = (g - (c - w/2)) / w * 255, clipped.
 *
 * The review is kept here until "Save draft" or "Sign review", which call /api/v1/reviews with the
 * session's CSRF token (covidet.api). The AI's findings are never changed: each gets an action.
 */
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const state = JSON.parse(document.getElementById("viewer-state").textContent);
  const canvas = document.getElementById("xray");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const overlay = document.getElementById("overlay");
  const stage = document.getElementById("stage");
  const viewport = document.getElementById("viewport");
  const loading = document.getElementById("loading");
  const wc = document.getElementById("wc");
  const ww = document.getElementById("ww");
  const showAi = document.getElementById("show-ai");
  const showReview = document.getElementById("show-review");
  const zoomValue = document.getElementById("zoom-value");
  const findingList = document.getElementById("finding-list");
  const addedList = document.getElementById("added-list");
  const newBoxLabel = document.getElementById("new-box-label");
  const reviewLabel = document.getElementById("review-label");
  const reviewComment = document.getElementById("review-comment");
  const reviewMessage = document.getElementById("review-message");
  const reviewState = document.getElementById("review-state");
  const form = document.getElementById("review-form");

  let width = state.width || canvas.width;
  let height = state.height || canvas.height;
  let original = null; // ImageData of the default rendering
  let windowFrame = 0;
  let mode = "pan";
  let drag = null;
  let keyboardBox = null; // [x1, y1, x2, y2] of a box drawn from the keyboard (review_keys.js)
  const view = { scale: 1, x: 0, y: 0 };
  const review = { actions: new Map(), added: [], draftId: null };

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  function svg(name, attributes) {
    const node = document.createElementNS(SVG, name);
    Object.entries(attributes || {}).forEach(function (pair) {
      node.setAttribute(pair[0], String(pair[1]));
    });
    return node;
  }

  function say(text, kind) {
    reviewMessage.textContent = text;
    reviewMessage.dataset.kind = kind || "info";
  }

  // ---------------------------------------------------------------------------- image and windowing

  function applyWindow() {
    windowFrame = 0;
    const center = Number(wc.value);
    const span = Number(ww.value);
    document.getElementById("wc-value").textContent = String(center);
    document.getElementById("ww-value").textContent = String(span);
    if (!original) return;
    const lut = new Uint8ClampedArray(256); // clamps and rounds like the server's np.clip + round
    for (let grey = 0; grey < 256; grey += 1) lut[grey] = ((grey - (center - span / 2)) / span) * 255;
    const out = new ImageData(new Uint8ClampedArray(original.data), original.width, original.height);
    const data = out.data;
    for (let i = 0; i < data.length; i += 4) {
      const value = lut[data[i]];
      data[i] = value;
      data[i + 1] = value;
      data[i + 2] = value;
    }
    ctx.putImageData(out, 0, 0);
    canvas.dataset.window = center + "/" + span;
  }

  function scheduleWindow() {
    if (!windowFrame) windowFrame = window.requestAnimationFrame(applyWindow);
  }

  function setWindow(center, span) {
    wc.value = String(center);
    ww.value = String(span);
    scheduleWindow();
  }

  function loadImage() {
    const image = new Image();
    image.onload = function () {
      width = image.naturalWidth;
      height = image.naturalHeight;
      canvas.width = width;
      canvas.height = height;
      overlay.setAttribute("viewBox", "0 0 " + width + " " + height);
      overlay.setAttribute("width", String(width));
      overlay.setAttribute("height", String(height));
      ctx.drawImage(image, 0, 0);
      original = ctx.getImageData(0, 0, width, height);
      applyWindow();
      fit();
      drawBoxes();
      loading.hidden = true;
      canvas.dataset.loaded = "true";
    };
    image.onerror = function () {
      loading.textContent = "The image could not be loaded (it may be unreadable; see the image's status).";
    };
    image.src = "/api/v1/images/" + state.imageId + "/pixels.png";
  }

  // ------------------------------------------------------------------------------------ zoom and pan

  function applyView() {
    stage.style.transform = "translate(" + view.x + "px, " + view.y + "px) scale(" + view.scale + ")";
    stage.dataset.scale = String(view.scale);
    zoomValue.textContent = Math.round(view.scale * 100) + " %";
    scaleLabels();
  }

  function fit() {
    const box = viewport.getBoundingClientRect();
    const scale = Math.min(box.width / width, box.height / height) || 1;
    view.scale = scale;
    view.x = (box.width - width * scale) / 2;
    view.y = (box.height - height * scale) / 2;
    applyView();
  }

  function zoomAt(factor, cx, cy) {
    const scale = clamp(view.scale * factor, 0.05, 20);
    const k = scale / view.scale;
    view.x = cx - (cx - view.x) * k;
    view.y = cy - (cy - view.y) * k;
    view.scale = scale;
    applyView();
  }

  function zoomCenter(factor) {
    const box = viewport.getBoundingClientRect();
    zoomAt(factor, box.width / 2, box.height / 2);
  }

  /** Pointer position in original-image pixels, clipped to the image. */
  function toImage(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: clamp(((event.clientX - box.left) * width) / box.width, 0, width),
      y: clamp(((event.clientY - box.top) * height) / box.height, 0, height),
    };
  }

  // ------------------------------------------------------------------------------------------ boxes

  function effectiveLabel(finding) {
    const act = review.actions.get(finding.id);
    return act && act.action === "relabel" ? act.label : finding.label;
  }

  function labelText(node, x, y, text) {
    node.textContent = text;
    node.dataset.x = String(x);
    node.dataset.y = String(y);
  }

  // A box [x1, y1, x2, y2] in image pixels as an SVG rectangle with the `data` attributes; its stroke
  // keeps its width at any zoom.
  function boxRect(className, box, data) {
    const geometry = { class: className, x: box[0], y: box[1], width: box[2] - box[0], height: box[3] - box[1] };
    return svg("rect", Object.assign(geometry, data, { "vector-effect": "non-scaling-stroke" }));
  }

  // A box's caption at its top-left corner (placed and sized on screen by scaleLabels).
  function boxLabel(box, text) {
    const node = svg("text", { class: "box-label" });
    labelText(node, box[0], box[1], text);
    return node;
  }

  function scaleLabels() {
    // Labels keep a constant size on screen whatever the zoom.
    const size = 13 / view.scale;
    overlay.querySelectorAll("text.box-label").forEach(function (node) {
      const y = Number(node.dataset.y);
      node.setAttribute("font-size", String(size));
      node.setAttribute("x", String(Number(node.dataset.x) + 2 / view.scale));
      node.setAttribute("y", String(y - 4 / view.scale < size ? y + size + 2 / view.scale : y - 4 / view.scale));
    });
  }

  function drawBoxes() {
    overlay.replaceChildren();
    const ai = svg("g", { class: "ai-boxes" });
    if (!showAi.checked) ai.setAttribute("display", "none");
    state.findings.forEach(function (finding, index) {
      const act = review.actions.get(finding.id);
      const label = effectiveLabel(finding);
      const box = finding.box;
      const group = svg("g", {
        class: "ai-finding label-" + label + (act ? " act-" + act.action : ""),
        "data-finding-id": finding.id,
      });
      group.append(
        boxRect("ai-box", box, {
          "data-finding-id": finding.id,
          "data-label": finding.label,
          "data-score": finding.score,
        }),
        boxLabel(
          box,
          "#" + (index + 1) + " " + label + " " + finding.score.toFixed(2) + (act ? " · " + act.action : "")
        )
      );
      ai.append(group);
    });
    overlay.append(ai);

    const mine = svg("g", { class: "review-boxes" });
    if (!showReview.checked) mine.setAttribute("display", "none");
    review.added.forEach(function (added, index) {
      const box = added.box;
      const group = svg("g", { class: "added label-" + added.label, "data-index": index });
      group.append(
        boxRect("review-box", box, { "data-index": index, "data-label": added.label }),
        boxLabel(box, "new " + (index + 1) + " " + added.label)
      );
      mine.append(group);
    });
    overlay.append(mine);
    if (keyboardBox) {
      overlay.append(boxRect("drawing keyboard-box", keyboardBox));
    }
    if (drag && drag.kind === "draw") {
      const box = [
        Math.min(drag.x0, drag.x1),
        Math.min(drag.y0, drag.y1),
        Math.max(drag.x0, drag.x1),
        Math.max(drag.y0, drag.y1),
      ];
      overlay.append(boxRect("drawing", box));
    }
    scaleLabels();
  }

  // --------------------------------------------------------------------------------- mouse, keyboard

  viewport.addEventListener("pointerdown", function (event) {
    if (event.button !== 0) return;
    viewport.setPointerCapture(event.pointerId);
    if (mode === "draw" && original) {
      const point = toImage(event);
      drag = { kind: "draw", x0: point.x, y0: point.y, x1: point.x, y1: point.y };
    } else {
      drag = { kind: "pan", cx: event.clientX, cy: event.clientY, vx: view.x, vy: view.y };
      viewport.classList.add("panning");
    }
    event.preventDefault();
  });

  viewport.addEventListener("pointermove", function (event) {
    if (!drag) return;
    if (drag.kind === "pan") {
      view.x = drag.vx + event.clientX - drag.cx;
      view.y = drag.vy + event.clientY - drag.cy;
      applyView();
    } else {
      const point = toImage(event);
      drag.x1 = point.x;
      drag.y1 = point.y;
      drawBoxes();
    }
  });

  function endDrag(event) {
    if (!drag) return;
    const done = drag;
    drag = null;
    viewport.classList.remove("panning");
    if (done.kind === "draw") {
      const point = toImage(event);
      const box = [
        Math.min(done.x0, point.x),
        Math.min(done.y0, point.y),
        Math.max(done.x0, point.x),
        Math.max(done.y0, point.y),
      ].map(function (value) {
        return Math.round(value * 10) / 10;
      });
      // A click is not a box: at least 4 pixels each way.
      if (box[2] - box[0] >= 4 && box[3] - box[1] >= 4) {
        review.added.push({ label: newBoxLabel.value, box: box });
        renderAdded();
        say("Box added: save the draft or sign to keep it.");
      }
      drawBoxes();
    }
  }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", function () {
    drag = null;
    drawBoxes();
  });

  viewport.addEventListener(
    "wheel",
    function (event) {
      event.preventDefault();
      const box = viewport.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
    },
    { passive: false }
  );

  viewport.addEventListener("keydown", function (event) {
    const step = 40;
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[event.key]) {
      view.x += moves[event.key][0];
      view.y += moves[event.key][1];
      applyView();
    } else if (event.key === "+" || event.key === "=") {
      zoomCenter(1.25);
    } else if (event.key === "-") {
      zoomCenter(1 / 1.25);
    } else if (event.key === "0") {
      fit();
    } else {
      return;
    }
    event.preventDefault();
  });

  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomCenter(1.25);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomCenter(1 / 1.25);
  });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("win-reset").addEventListener("click", function () {
    setWindow(127.5, 255);
  });
  document.getElementById("win-lung").addEventListener("click", function () {
    setWindow(100, 120);
  });
  wc.addEventListener("input", scheduleWindow);
  ww.addEventListener("input", scheduleWindow);
  showAi.addEventListener("change", drawBoxes);
  showReview.addEventListener("change", drawBoxes);
  document.querySelectorAll('input[name="mode"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      if (radio.checked) mode = radio.value;
      viewport.dataset.mode = mode;
    });
  });
  window.addEventListener("resize", fit);

  // ------------------------------------------------------------------------------------------ review

  function findingControls(id) {
    return {
      action: findingList.querySelector('.finding-action[data-finding-id="' + id + '"]'),
      label: findingList.querySelector('.finding-label[data-finding-id="' + id + '"]'),
    };
  }

  function readFinding(id) {
    const controls = findingControls(id);
    controls.label.disabled = controls.action.value !== "relabel";
    if (!controls.action.value) review.actions.delete(id);
    else review.actions.set(id, { action: controls.action.value, label: controls.label.value });
    drawBoxes();
  }

  findingList.querySelectorAll("li.finding").forEach(function (item) {
    const id = Number(item.dataset.findingId);
    const controls = findingControls(id);
    controls.action.addEventListener("change", function () {
      readFinding(id);
    });
    controls.label.addEventListener("change", function () {
      readFinding(id);
    });
    item.addEventListener("mouseenter", function () {
      overlay.querySelectorAll('g.ai-finding[data-finding-id="' + id + '"]').forEach(function (g) {
        g.classList.add("hover");
      });
    });
    item.addEventListener("mouseleave", function () {
      overlay.querySelectorAll("g.hover").forEach(function (g) {
        g.classList.remove("hover");
      });
    });
  });

  function renderAdded() {
    addedList.replaceChildren();
    review.added.forEach(function (added, index) {
      const item = document.createElement("li");
      item.className = "added-box";
      item.dataset.index = String(index);
      const text = document.createElement("span");
      text.textContent = "[" + added.box.map(Math.round).join(", ") + "] ";
      const label = document.createElement("label");
      label.textContent = "Label ";
      const select = document.createElement("select");
      select.className = "added-label";
      state.labels.forEach(function (name) {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        option.selected = name === added.label;
        select.append(option);
      });
      select.addEventListener("change", function () {
        added.label = select.value;
        drawBoxes();
      });
      label.append(select);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete-box";
      remove.textContent = "Delete box";
      remove.setAttribute("aria-label", "Delete drawn box " + (index + 1));
      remove.addEventListener("click", function () {
        review.added.splice(index, 1);
        renderAdded();
        drawBoxes();
        say("Box deleted.");
      });
      item.append(text, label, remove);
      addedList.append(item);
    });
  }

  function payload() {
    const findings = [];
    review.actions.forEach(function (act, id) {
      const item = { action: act.action, source_finding_id: id };
      if (act.action === "relabel") item.label = act.label;
      findings.push(item);
    });
    review.added.forEach(function (added) {
      findings.push({ action: "add", label: added.label, box: added.box });
    });
    return {
      label: reviewLabel.value || null,
      comment: reviewComment.value.trim() ? reviewComment.value : null,
      findings: findings,
    };
  }

  async function saveDraft() {
    const body = payload();
    let answer;
    if (review.draftId === null) {
      answer = await window.covidet.api(
        "POST",
        "/api/v1/reviews",
        Object.assign({ image_id: state.imageId }, body)
      );
      review.draftId = answer.id;
    } else {
      answer = await window.covidet.api("PATCH", "/api/v1/reviews/" + review.draftId, body);
    }
    reviewState.textContent = "Draft " + answer.id + ", saved " + new Date(answer.updated_at).toISOString() + ".";
    form.dataset.draftId = String(answer.id);
    return answer;
  }

  function setBusy(busy) {
    form.querySelectorAll("button").forEach(function (button) {
      button.disabled = busy;
    });
  }

  document.getElementById("save-draft").addEventListener("click", async function () {
    setBusy(true);
    try {
      await saveDraft();
      say("Draft saved.", "ok");
    } catch (error) {
      say("Not saved: " + error.message, "error");
    } finally {
      setBusy(false);
    }
  });

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!reviewLabel.value) {
      say("Choose the conclusion for the whole image before signing.", "error");
      reviewLabel.focus();
      return;
    }
    setBusy(true);
    try {
      const draft = await saveDraft();
      const signed = await window.covidet.api("POST", "/api/v1/reviews/" + draft.id + "/sign");
      say("Review " + signed.id + " signed.", "ok");
      form.dataset.signed = String(signed.id);
      // The page is rendered again with the signed review listed and a confirmation that stays until
      // it is dismissed (the server shows it for ?signed=ID, a review of this reader's).
      window.location.assign(window.location.pathname + "?signed=" + encodeURIComponent(signed.id));
    } catch (error) {
      say("Not signed: " + error.message, "error");
      setBusy(false);
    }
  });

  function restoreDraft(draft) {
    if (!draft) return;
    review.draftId = draft.id;
    form.dataset.draftId = String(draft.id);
    reviewLabel.value = draft.label || "";
    reviewComment.value = draft.comment || "";
    draft.findings.forEach(function (item) {
      if (item.action === "add" && item.box) {
        review.added.push({ label: item.label, box: item.box });
      } else if (item.source_finding_id) {
        const controls = findingControls(item.source_finding_id);
        if (!controls.action) return;
        controls.action.value = item.action;
        if (item.action === "relabel" && item.label) controls.label.value = item.label;
        review.actions.set(item.source_finding_id, { action: item.action, label: item.label });
        controls.label.disabled = item.action !== "relabel";
      }
    });
    renderAdded();
  }

  if (!state.canReview) {
    form.querySelectorAll("button, select, textarea").forEach(function (node) {
      node.disabled = true;
    });
  }
  restoreDraft(state.draft);
  drawBoxes();
  loadImage();

  // What static/review_keys.js (keyboard shortcuts, boxes drawn from the keyboard) needs.
  window.covidetViewer = {
    size: function () {
      return { width: width, height: height };
    },
    previewBox: function (box) {
      keyboardBox = box;
      drawBoxes();
    },
    addBox: function (box) {
      review.added.push({ label: newBoxLabel.value, box: box.map((v) => Math.round(v * 10) / 10) });
      renderAdded();
      drawBoxes();
    },
  };
})();

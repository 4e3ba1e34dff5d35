/*
 * Keyboard shortcuts of the review, and boxes drawn from the keyboard (no mouse needed).
 *
 *   1-9        choose AI finding 1-9 (highlighted in the list and on the image)
 *   c / x / e  confirm / reject / relabel the chosen finding (relabel moves to its new-label list)
 *   d          delete the chosen finding's box;  u  clear its action
 *   b          draw a box: arrows move it, Shift+arrows resize it, Enter adds it, Escape cancels
 *   s          save the draft;  Ctrl+Enter  sign the review (or the addendum)
 *   ?          show or hide this list
 *
 * Keys are ignored while the reader types in a field (except Ctrl+Enter and Escape). The actions are
 * those of the form's own controls (their change events), so the form stays the one source of truth.
 * Needs window.covidetViewer from viewer.js (image size, box preview, adding a box).
 */
"use strict";

(function () {
  const form = document.getElementById("review-form");
  const viewer = window.covidetViewer;
  const message = document.getElementById("review-message");
  const help = document.getElementById("shortcuts");
  const helpButton = document.getElementById("shortcuts-toggle");
  if (!form || !viewer) return;
  let chosen = null; // the finding id chosen with 1-9
  let box = null; // the box being drawn, [x1, y1, x2, y2] in image pixels

  function say(text) {
    message.textContent = text;
    message.dataset.kind = "info";
  }

  function findings() {
    return Array.from(document.querySelectorAll("#finding-list li.finding"));
  }

  function choose(index) {
    const items = findings();
    if (index >= items.length) {
      say("There is no AI finding " + (index + 1) + ".");
      return;
    }
    items.forEach(function (item, i) {
      item.classList.toggle("is-chosen", i === index);
    });
    chosen = items[index].dataset.findingId;
    document.querySelectorAll("#overlay g.ai-finding").forEach(function (group) {
      group.classList.toggle("hover", group.dataset.findingId === chosen);
    });
    items[index].scrollIntoView({ block: "nearest" });
    say("AI finding " + (index + 1) + " chosen: c confirm, x reject, e relabel, d delete the box, u clear.");
  }

  function act(action) {
    if (chosen === null) {
      say("Choose an AI finding first (keys 1-9).");
      return;
    }
    const select = document.querySelector('.finding-action[data-finding-id="' + chosen + '"]');
    if (!select || select.disabled) return;
    select.value = action;
    select.dispatchEvent(new Event("change", { bubbles: true }));
    if (action === "relabel") {
      const label = document.querySelector('.finding-label[data-finding-id="' + chosen + '"]');
      if (label) label.focus();
      say("Relabel: choose the new label, then continue.");
    } else {
      say("Finding " + (findings().findIndex((i) => i.dataset.findingId === chosen) + 1) + ": " + (action || "no action") + ".");
    }
  }

  // ------------------------------------------------------------------------------ keyboard boxes

  function step() {
    return Math.max(1, Math.round(viewer.size().width / 100));
  }

  function clampBox(b) {
    const size = viewer.size();
    const w = Math.min(b[2] - b[0], size.width);
    const h = Math.min(b[3] - b[1], size.height);
    const x = Math.min(Math.max(0, b[0]), size.width - w);
    const y = Math.min(Math.max(0, b[1]), size.height - h);
    return [x, y, x + w, y + h];
  }

  function startBox() {
    const size = viewer.size();
    const w = Math.round(size.width * 0.2);
    const h = Math.round(size.height * 0.2);
    const x = Math.round((size.width - w) / 2);
    const y = Math.round((size.height - h) / 2);
    box = [x, y, x + w, y + h];
    viewer.previewBox(box);
    form.dataset.drawing = "true";
    say("Drawing a box: arrows move it, Shift+arrows resize it, Enter adds it, Escape cancels.");
  }

  function moveBox(key, resize) {
    const d = step();
    const moves = { ArrowLeft: [-d, 0], ArrowRight: [d, 0], ArrowUp: [0, -d], ArrowDown: [0, d] };
    const [dx, dy] = moves[key];
    if (resize) {
      // Shift+Right/Down grow the box, Shift+Left/Up shrink it; never below 4 pixels.
      box = [box[0], box[1], Math.max(box[0] + 4, box[2] + dx), Math.max(box[1] + 4, box[3] + dy)];
    } else {
      box = [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy];
    }
    box = clampBox(box);
    viewer.previewBox(box);
  }

  function endBox(keep) {
    if (keep) {
      viewer.addBox(box);
      say("Box added [" + box.map(Math.round).join(", ") + "]: save the draft or sign to keep it.");
    } else {
      say("Box cancelled.");
    }
    box = null;
    delete form.dataset.drawing;
    viewer.previewBox(null);
  }

  // ---------------------------------------------------------------------------------------- keys

  function toggleHelp() {
    if (!help) return;
    help.hidden = !help.hidden;
    if (helpButton) helpButton.setAttribute("aria-expanded", String(!help.hidden));
  }
  if (helpButton) helpButton.addEventListener("click", toggleHelp);

  function typing(target) {
    return target && target.closest && target.closest("input, select, textarea, [contenteditable]");
  }

  document.addEventListener(
    "keydown",
    function (event) {
      if (box) {
        // While a box is drawn the arrows belong to it (not to panning), whatever has the focus.
        if (event.key in { ArrowLeft: 1, ArrowRight: 1, ArrowUp: 1, ArrowDown: 1 }) moveBox(event.key, event.shiftKey);
        else if (event.key === "Enter") endBox(true);
        else if (event.key === "Escape") endBox(false);
        else return;
        event.preventDefault();
        event.stopPropagation();
        return;
      }
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
        return;
      }
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      const key = event.key;
      if (key >= "1" && key <= "9") choose(Number(key) - 1);
      else if (key === "c") act("confirm");
      else if (key === "x") act("reject");
      else if (key === "e") act("relabel");
      else if (key === "d") act("delete");
      else if (key === "u") act("");
      else if (key === "b") startBox();
      else if (key === "s") document.getElementById("save-draft").click();
      else if (key === "?") toggleHelp();
      else return;
      event.preventDefault();
      event.stopPropagation();
    },
    true
  );

  // The confirmation of a signature stays until it is dismissed.
  const confirmation = document.getElementById("signed-confirmation");
  const dismiss = document.getElementById("dismiss-confirmation");
  if (confirmation && dismiss) {
    dismiss.addEventListener("click", function () {
      confirmation.hidden = true;
      const url = new URL(window.location.href);
      url.searchParams.delete("signed");
      window.history.replaceState(null, "", url.pathname + url.search);
      document.getElementById("h-review").focus();
    });
  }
})();

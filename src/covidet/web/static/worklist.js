/*
 * The live worklist. The page listens to the server-sent events of /api/v1/events; when a result,
 * a priority change or an alert arrives it fetches the server-rendered rows (/worklist/live with the
 * same filters) and swaps them in, so there is one renderer (the Jinja template) and no reload.
 * Rows that appear are marked "new", rows that changed place "moved", and an urgent alert is
 * announced (role="alert") and its row highlighted (rows with an unacknowledged alert also come
 * highlighted from the server, so a reload keeps them). The keyboard focus survives a refresh.
 */
"use strict";

(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  const toast = document.getElementById("alert-toast");
  if (!live || !window.EventSource) {
    if (status) status.textContent = "Live updates: not supported by this browser; reload to refresh.";
    return;
  }
  const alerted = new Set(); // image ids with an alert seen while this page is open
  let timer = null;
  let busy = false;
  let again = false;
  let opened = 0;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function rowIds() {
    return Array.from(live.querySelectorAll("tr[data-image-id]")).map(function (row) {
      return row.dataset.imageId;
    });
  }

  function decorate(before) {
    live.querySelectorAll("tr[data-image-id]").forEach(function (row, index) {
      const id = row.dataset.imageId;
      const old = before.indexOf(id);
      if (before.length && old === -1) row.classList.add("is-new");
      else if (old !== -1 && old !== index) row.classList.add("is-moved");
      if (alerted.has(id)) row.classList.add("is-alert");
    });
    bindAlerts();
    bindAcknowledge();
  }

  // The alerts strip stays as the reader left it (open or closed) while this tab lives.
  const STRIP_KEY = "covidet.alertsOpen";
  function bindAlerts() {
    const strip = document.getElementById("alerts");
    if (!strip) return;
    strip.open = window.sessionStorage.getItem(STRIP_KEY) === "1";
    strip.addEventListener("toggle", function () {
      window.sessionStorage.setItem(STRIP_KEY, strip.open ? "1" : "0");
    });
  }

  /** What has the keyboard focus, as a selector that finds the same control after a refresh. */
  function focusKey() {
    const active = document.activeElement;
    if (!active || !live.contains(active)) return null;
    if (active.matches("button.ack")) return { alertId: active.dataset.alertId };
    if (active.id) return { selector: "#" + CSS.escape(active.id) };
    const row = active.closest("tr[data-study-id]");
    const label = active.getAttribute("aria-label");
    if (row && label) {
      return { selector: 'tr[data-study-id="' + row.dataset.studyId + '"] [aria-label="' + CSS.escape(label) + '"]' };
    }
    if (active.matches("#alerts > summary")) return { selector: "#alerts > summary" };
    return null;
  }

  /** Give the focus back after the rows were swapped (a reader acknowledging alerts with the keyboard
   * stays in the alerts: on the next alert's button, or on the strip when none is left). */
  function restoreFocus(key) {
    if (!key) return;
    let target = null;
    if (key.alertId) {
      target = live.querySelector('button.ack[data-alert-id="' + key.alertId + '"]');
      if (!target && pendingAck && pendingAck.next) {
        target = live.querySelector('button.ack[data-alert-id="' + pendingAck.next + '"]');
      }
      if (!target) target = live.querySelector("button.ack") || live.querySelector("#alerts:not([hidden]) > summary");
      if (!target) target = document.getElementById("worklist");
    } else if (key.selector) {
      target = live.querySelector(key.selector);
    }
    if (target) target.focus();
  }
  let pendingAck = null;

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const before = rowIds();
      const focused = focusKey();
      const strip = document.getElementById("alerts");
      const stripOpen = strip ? strip.open : false;
      // Thumbnails already shown are kept (not fetched and decoded again on every refresh).
      const images = new Map();
      live.querySelectorAll("img[src]").forEach(function (img) {
        if (img.complete) images.set(img.getAttribute("src"), img);
      });
      const response = await fetch("/worklist/live?" + (live.dataset.query || ""), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (response.redirected && new URL(response.url).pathname === "/login") {
        window.covidet.toLogin();
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      live.innerHTML = await response.text(); // rendered and escaped by the server's template
      live.querySelectorAll("img[src]").forEach(function (img) {
        const kept = images.get(img.getAttribute("src"));
        if (kept) img.replaceWith(kept);
      });
      decorate(before);
      const newStrip = document.getElementById("alerts");
      if (newStrip) newStrip.open = stripOpen;
      restoreFocus(focused);
      pendingAck = null;
      live.dataset.refreshes = String(Number(live.dataset.refreshes || "0") + 1);
    } catch (error) {
      setStatus("error", "Live updates: the worklist could not be refreshed (" + error.message + ").");
    } finally {
      busy = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    // Events come in bursts (analysed, then priority, then maybe alert): one refresh for a burst.
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 250);
  }

  function showAlert(event) {
    const id = String(event.image_id);
    alerted.add(id);
    if (!toast) return;
    toast.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = "Urgent: ";
    // The first reason decides; the others are on the row and in the alerts list.
    const reasons = event.reasons || [];
    const more = reasons.length > 1 ? " (+" + (reasons.length - 1) + " more) " : " ";
    const text = document.createTextNode((reasons[0] || "new urgent case") + more);
    const link = document.createElement("a");
    link.href = "/images/" + encodeURIComponent(id);
    link.textContent = "Open image " + id;
    toast.append(strong, text, link);
    toast.dataset.imageId = id;
    toast.hidden = false;
  }

  function bindAcknowledge() {
    live.querySelectorAll("button.ack").forEach(function (button) {
      button.addEventListener("click", async function () {
        // Where the focus goes once this alert is gone: the next alert's button.
        const items = Array.from(live.querySelectorAll("button.ack"));
        const next = items[items.indexOf(button) + 1] || items[items.indexOf(button) - 1];
        pendingAck = { id: button.dataset.alertId, next: next ? next.dataset.alertId : null };
        button.setAttribute("aria-disabled", "true"); // not disabled: a disabled button loses the focus
        if (button.dataset.busy) return;
        button.dataset.busy = "1";
        try {
          await window.covidet.api("POST", "/api/v1/alerts/" + button.dataset.alertId + "/acknowledge");
          schedule();
        } catch (error) {
          delete button.dataset.busy;
          button.removeAttribute("aria-disabled");
          setStatus("error", "Could not acknowledge the alert: " + error.message);
        }
      });
    });
  }

  const source = new EventSource("/api/v1/events");
  source.onopen = function () {
    opened += 1;
    setStatus("connected", "Live updates: on");
    if (opened > 1) schedule(); // reconnected: events may have been missed meanwhile
  };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("closed", "Live updates: off (sign in again, or reload the page).");
    } else {
      setStatus("reconnecting", "Live updates: reconnecting…");
    }
  };
  // "claim" (a study claimed or released) and "reviewed" (a review signed) come from the reading room.
  ["analysed", "priority", "failed", "resync", "claim", "reviewed"].forEach(function (type) {
    source.addEventListener(type, schedule);
  });
  source.addEventListener("alert", function (message) {
    try {
      showAlert(JSON.parse(message.data));
    } catch (error) {
      /* a malformed event only costs the banner; the refresh still shows the row */
    }
    schedule();
  });
  window.addEventListener("pagehide", function () {
    source.close();
  });
  bindAlerts();
  bindAcknowledge();
})();

// Keyboard: "n" takes the next case (as the button does), unless the reader is typing.
(function () {
  const next = document.getElementById("next-case");
  if (!next) return;
  document.addEventListener("keydown", function (event) {
    if (event.key !== "n" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, select, textarea, [contenteditable]")) return;
    event.preventDefault();
    next.click();
  });
})();

// Filters: empty fields stay out of the address (shorter, bookmarkable URLs).
(function () {
  const form = document.getElementById("filters");
  if (!form) return;
  form.addEventListener("submit", function () {
    form.querySelectorAll("select, input[type=search]").forEach(function (field) {
      if (!field.value) field.disabled = true;
    });
  });
  window.addEventListener("pageshow", function () {
    // Back from the filtered page (bfcache): the fields are usable again.
    form.querySelectorAll("select, input").forEach(function (field) {
      field.disabled = false;
    });
  });
})();

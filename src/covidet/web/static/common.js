/* covidet web app: helpers shared by the pages (no framework, no build step). */
"use strict";

window.covidet = (function () {
  /** The session's CSRF token, rendered by the server into <meta name="csrf-token">. */
  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function toLogin() {
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  }

  /**
   * Call the JSON API with the session cookie. Unsafe methods carry the CSRF token in the
   * X-CSRF-Token header, as covidet.api.auth expects. Resolves to the parsed body; rejects with an
   * Error whose message is the API's one-line "detail".
   */
  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = { detail: text };
    }
    if (response.status === 401) {
      toLogin();
    }
    if (!response.ok) {
      const error = new Error((data && data.detail) || response.statusText || "request failed");
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  return { api: api, csrfToken: csrfToken, toLogin: toLogin };
})();

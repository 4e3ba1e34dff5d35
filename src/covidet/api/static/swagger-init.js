// Starts Swagger UI on /docs. A file of its own (not an inline script), so that the page's
// Content-Security-Policy can allow scripts from this origin only.
(function () {
  "use strict";
  var openapiUrl = document.currentScript.getAttribute("data-openapi-url");
  window.addEventListener("load", function () {
    window.ui = SwaggerUIBundle({
      url: openapiUrl,
      dom_id: "#swagger-ui",
      layout: "BaseLayout",
      deepLinking: true,
      showExtensions: true,
      showCommonExtensions: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    });
  });
})();

// Starts Swagger UI on /api/docs (no inline script: the page's Content-Security-Policy forbids
// it). "Try it out" requests carry X-Narra-Request, which narra asks of every request that
// changes something, as the web app's own requests do.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  requestInterceptor: (request) => { request.headers["X-Narra-Request"] = "1"; return request; },
});

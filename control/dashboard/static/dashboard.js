// Tidegate dashboard: confirm before steering, and refresh the page's live part in place.
// Written for this project; no library. Loaded as a file (the CSP allows no inline script).
"use strict";
(function () {
  function confirmBeforeSubmit(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) {
          event.preventDefault();
        }
      });
    });
  }

  function poll(live) {
    var every = Number(live.dataset.every) || 2000;
    function again() {
      window.setTimeout(refresh, every);
    }
    function refresh() {
      fetch(live.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (response.redirected || response.status === 401) {
            window.location.reload(); // the session ended: the server sends the login form
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null) {
            // Server-rendered and escaped there; the CSP keeps any script in it from running.
            live.innerHTML = html;
            live.dataset.refreshed = String(Date.now());
          }
          again();
        })
        .catch(again);
    }
    again();
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmBeforeSubmit(document);
    var live = document.getElementById("live");
    if (live && live.dataset.refresh) {
      poll(live);
    }
  });
})();

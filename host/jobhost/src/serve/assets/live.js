// Live refresh: every two seconds, fetch this page again and swap in its <main>, so counts
// and tables stay current without a reload (pages marked data-refresh="off" excepted). Pages work without this script; it pauses while
// the operator is typing in a form or has rows selected, so it never throws away their work.
(function () {
  "use strict";
  const PERIOD_MS = 2000;
  function busy() {
    const active = document.activeElement;
    if (active && ["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName)) return true;
    return document.querySelector("main input[type=checkbox]:checked") !== null;
  }
  // A page that is costly to build says so, and is left as it is.
  const still = document.querySelector("main [data-refresh=off]") !== null;
  async function refresh() {
    if (still || document.hidden || busy()) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      const current = document.querySelector("main");
      if (fresh && current && !busy()) {
        current.replaceWith(fresh);
        document.documentElement.dataset.refreshed = String(Date.now());
      }
    } catch (_) {
      // The server may be restarting; the next tick tries again.
    }
  }
  window.setInterval(refresh, PERIOD_MS);
})();

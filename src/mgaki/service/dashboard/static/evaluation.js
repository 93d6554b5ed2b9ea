/* Evaluation report: the server renders the report (tables, charts as images); this page shows it. */
"use strict";
(function () {
  const { api, boot, AuthNeeded } = window.Mgaki;

  async function start() {
    const err = document.getElementById("eval-error");
    err.hidden = true;
    try {
      const data = await api("/dashboard/evaluation");
      const doc = new DOMParser().parseFromString("<div>" + data.html + "</div>", "text/html");
      document.getElementById("report").replaceChildren(...doc.body.firstChild.childNodes);
      document.getElementById("report").dataset.rendered = "true";
    } catch (e) {
      if (e instanceof AuthNeeded) return;
      err.textContent = "Could not evaluate: " + e.message;
      err.hidden = false;
    } finally {
      document.getElementById("eval-loading").hidden = true;
    }
  }

  boot(start);
})();

/* Patient list: filters and sort go to the API (the server sorts and filters every patient). */
"use strict";
(function () {
  const { el, api, boot, fmtTime, fmtNum, badge, AuthNeeded, setZone } = window.Mgaki;
  const state = { sort: "severity", order: "desc" };
  let timer = null;
  let latest = 0;  // the newest load(): an older request's answer, arriving after it, is not drawn

  function params() {
    const p = new URLSearchParams();
    p.set("scope", document.getElementById("f-scope").value);
    const sev = document.getElementById("f-severity").value;
    if (sev) p.set("severity", sev);
    const q = document.getElementById("f-q").value.trim();
    if (q) p.set("q", q);
    if (document.getElementById("f-with-alerts").checked) p.set("with_alerts", "true");
    p.set("sort", state.sort);
    p.set("order", state.order);
    return p;
  }

  let ranges = {};
  let labels = {};

  /** Latest Mg, marked low or high against the knowledge base's reference range the API sends. */
  function mgCell(r) {
    const v = r.latest_mg_mg_dl;
    if (v === null || v === undefined) return el("td", { class: "num" });
    const rr = ranges.magnesium;
    const flag = rr ? (v < rr.low ? "low" : (v > rr.high ? "high" : "")) : "";
    return el("td", { class: "num " + flag, title: flag ? flag : "" },
      fmtNum(v), flag ? el("small", { text: flag === "low" ? " L" : " H" }) : null,
      el("br"), el("small", { class: "muted", text: fmtTime(r.latest_mg_time) }));
  }

  function row(r) {
    const href = "/ui/patients/" + encodeURIComponent(r.patient_id);
    return el("tr", { "data-patient": r.patient_id },
      el("td", {}, el("a", { href, text: r.patient_id })),
      el("td", {}, badge(r.highest_severity)),
      el("td", { class: "num" }, String(r.alerts)),
      el("td", {}, r.last_alert_kind ? el("span", {}, labels[r.last_alert_kind] || r.last_alert_kind.replaceAll("_", " "), el("br"),
        el("small", { class: "muted", text: fmtTime(r.last_alert) })) : ""),
      mgCell(r),
      el("td", { class: "num aki" + (r.aki_stage ? " stage" + r.aki_stage : "") },
        r.aki_stage === null || r.aki_stage === undefined ? "" : String(r.aki_stage)),
      el("td", { class: "num opt" }, fmtNum(r.latest_creatinine_mg_dl)),
      el("td", { class: "opt" }, r.ward || (r.admitted ? "admitted" : "discharged")),
      el("td", { class: "num opt" }, r.age_years === null || r.age_years === undefined ? "" : String(r.age_years)));
  }

  async function load() {
    const mine = ++latest;
    const err = document.getElementById("list-error");
    err.hidden = true;
    document.querySelectorAll("#patients th[data-sort]").forEach((th) => {
      th.setAttribute("aria-sort", th.dataset.sort === state.sort ? (state.order === "asc" ? "ascending" : "descending") : "none");
    });
    try {
      const data = await api("/dashboard/patients?" + params().toString());
      if (mine !== latest) return;  // a filter or sort changed while it was under way: the newer one draws
      ranges = data.reference_ranges || {};
      labels = data.alert_labels || {};
      setZone(data.timezone);
      const body = document.querySelector("#patients tbody");
      body.replaceChildren(...data.patients.map(row));
      document.getElementById("empty").hidden = data.patients.length > 0;
      document.getElementById("count").textContent = data.total + (data.total === 1 ? " patient" : " patients");
    } catch (e) {
      if (e instanceof AuthNeeded || mine !== latest) return;
      err.textContent = "Could not load the list: " + e.message;
      err.hidden = false;
    }
  }

  let wired = false;

  function start() {
    if (wired) { load(); return; }
    wired = true;
    document.querySelectorAll("#patients th[data-sort]").forEach((th) => {
      th.addEventListener("click", () => {
        if (state.sort === th.dataset.sort) state.order = state.order === "desc" ? "asc" : "desc";
        else { state.sort = th.dataset.sort; state.order = th.dataset.sort === "patient_id" ? "asc" : "desc"; }
        load();
      });
    });
    const form = document.getElementById("filters");
    form.addEventListener("change", load);
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
    document.getElementById("f-q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(load, 250); });
    load();
  }

  boot(start);
})();

/* Patient page: alerts, interactive timeline (Vega-Lite spec from the server), assessment, dose planner. */
"use strict";
(function () {
  const { el, api, boot, fmtTime, fmtNum, badge, AuthNeeded, setZone } = window.Mgaki;
  const pid = decodeURIComponent(location.pathname.replace(/^\/ui\/patients\//, "").replace(/\/$/, ""));
  const base = "/dashboard/patients/" + encodeURIComponent(pid);
  const EMBED = { actions: { export: true, source: false, compiled: false, editor: false }, renderer: "svg" };
  let timelineSpec = null;
  let doseSpec = null;
  let wired = false;

  function pageError(msg) {
    const e = document.getElementById("page-error");
    e.textContent = msg;
    e.hidden = false;
  }

  /** vconcat panels cannot size to their container: give each the container's width, minus the axis. */
  async function drawTimeline() {
    const box = document.getElementById("timeline");
    if (!timelineSpec || !timelineSpec.vconcat) {
      box.replaceChildren(el("p", { class: "muted", text: "No Mg, creatinine, K, Ca, urine output or Mg dose recorded." }));
      return;
    }
    const spec = JSON.parse(JSON.stringify(timelineSpec));
    const width = Math.max(260, box.clientWidth - 110);
    spec.vconcat.forEach((v) => { v.width = width; });
    await vegaEmbed(box, spec, EMBED);
    box.dataset.rendered = "true";
  }

  async function drawDose() {
    if (!doseSpec) return;
    const box = document.getElementById("dose-chart");
    await vegaEmbed(box, doseSpec, EMBED);
    box.dataset.rendered = "true";
  }

  const STATUS = { open: "Needs action", acknowledged: "Acknowledged", snoozed: "Snoozed", resolved: "Resolved" };

  function stateLine(st) {
    const bits = [el("span", { class: "status " + st.status, text: STATUS[st.status] || st.status })];
    if (st.status !== "open" && st.updated_by) bits.push(" by " + st.updated_by);
    if (st.status === "snoozed" && st.snoozed_until) bits.push(" until " + fmtTime(st.snoozed_until));
    if (st.reason) bits.push(": " + st.reason);
    if (st.assignee) bits.push(el("span", { class: "assignee", text: " · assigned to " + st.assignee }));
    if (st.seen_by.length) bits.push(el("span", { class: "muted", text: " · seen by " + st.seen_by.map((s) => s.who).join(", ") }));
    return el("div", { class: "state" }, bits);
  }

  /** One small form per action that needs more than a click (snooze: reason and how long; assign: to whom). */
  function actionForm(a, action) {
    const fields = [];
    if (action === "snooze") {
      fields.push(el("label", {}, "Reason ", el("input", { name: "reason", required: true, maxlength: "500",
        placeholder: "e.g. repeat level due at 14:00" })));
      fields.push(el("label", {}, "for ", el("select", { name: "hours" },
        [1, 4, 8, 12, 24, 48].map((h) => el("option", { value: String(h), selected: h === 4, text: h + " h" })))));
    } else if (action === "assign") {
      fields.push(el("label", {}, "To ", el("input", { name: "assignee", required: true, maxlength: "200",
        placeholder: "name or team" })));
    } else if (action === "resolve") {
      fields.push(el("label", {}, "Reason ", el("input", { name: "reason", maxlength: "500",
        placeholder: "optional, e.g. Mg replaced" })));
    }
    const form = el("form", { class: "alert-form", "data-action": action }, fields,
      el("button", { type: "submit", text: { snooze: "Snooze", assign: "Assign", resolve: "Resolve" }[action] }),
      el("button", { type: "button", class: "link-button cancel", text: "Cancel" }));
    form.querySelector(".cancel").addEventListener("click", () => form.remove());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      if (form.reason && form.reason.value.trim()) body.reason = form.reason.value.trim();
      if (form.assignee) body.assignee = form.assignee.value.trim();
      if (form.hours) body.until = new Date(Date.now() + Number(form.hours.value) * 3600e3).toISOString();
      await act(a, action, body, form);
    });
    return form;
  }

  async function act(a, action, body, where) {
    const err = document.getElementById("alerts-error");
    err.hidden = true;
    try {
      await api("/alerts/" + a.id + "/" + action, { method: "POST", headers: { "Content-Type": "application/json" },
                                                    body: JSON.stringify(body || {}) });
      await loadTimeline();
    } catch (e) {
      if (e instanceof AuthNeeded) return;
      err.textContent = "Could not " + action + " the alert: " + e.message;
      err.hidden = false;
      if (where) where.querySelector("button[type=submit]").disabled = false;
    }
  }

  function actions(a) {
    const st = a.state.status;
    const box = el("div", { class: "alert-actions" });
    const button = (action, text, withForm) => {
      const b = el("button", { type: "button", class: "small", "data-action": action, text });
      b.addEventListener("click", () => {
        if (!withForm) { b.disabled = true; act(a, action, {}); return; }
        const li = b.closest("li");
        li.querySelectorAll(".alert-form").forEach((f) => f.remove());
        li.append(actionForm(a, action));
        const first = li.querySelector(".alert-form input, .alert-form select");
        if (first) first.focus();
      });
      return b;
    };
    if (st === "open") box.append(button("acknowledge", "Acknowledge", false), button("snooze", "Snooze…", true));
    if (st !== "resolved") box.append(button("assign", "Assign…", true), button("resolve", "Resolve…", true));
    if (st !== "open") box.append(button("reopen", "Reopen", false));
    return box;
  }

  function renderAlerts(alerts) {
    const list = document.getElementById("alerts");
    if (!alerts.length) { list.replaceChildren(el("li", { class: "muted" }, "No alert raised by surveillance.")); return; }
    const open = alerts.filter((a) => a.state.needs_action).length;
    document.getElementById("alerts-count").textContent = open ? open + " need action" : "none needs action";
    // what needs action first, then newest first
    const sorted = alerts.slice().sort((x, y) => (y.state.needs_action - x.state.needs_action) || (x.time < y.time ? 1 : -1));
    list.replaceChildren(...sorted.map((a) => el("li", { class: "alert " + a.severity + " " + a.state.status,
                                                        "data-alert-id": String(a.id), "data-status": a.state.status },
      badge(a.severity),
      el("span", {}, el("strong", { text: a.label || a.kind.replaceAll("_", " ") }), " ", el("span", { class: "when", text: fmtTime(a.time) })),
      el("span", { class: "detail", text: a.detail || "" }),
      stateLine(a.state),
      actions(a))));
  }

  async function loadTimeline() {
    const tl = await api(base + "/timeline");
    setZone(tl.timezone);
    document.getElementById("tz-note").textContent = "Times in the site's time zone (" + tl.timezone + ").";
    renderAlerts(tl.alerts);
    const top = tl.alerts.reduce((m, a) => Math.max(m, ["info", "warning", "critical"].indexOf(a.severity)), -1);
    const meta = document.getElementById("patient-meta");
    meta.replaceChildren(top >= 0 ? badge(["info", "warning", "critical"][top]) : "",
      " latest data " + fmtTime(tl.last_data));
    timelineSpec = tl.vega_lite;
    await drawTimeline();
  }

  function evidenceLinks(evidence) {
    return evidence.map((e) => {
      const link = { target: "_blank", rel: "noopener noreferrer", title: e.source };
      if (e.doi) return el("a", Object.assign({ href: "https://doi.org/" + e.doi, text: "doi:" + e.doi }, link));
      if (e.document && /^https?:\/\//.test(e.document)) {
        return el("a", Object.assign({ href: e.document, text: new URL(e.document).host }, link));
      }
      return el("span", { title: e.document || "", text: e.source });
    });
  }

  function renderAssessment(data) {
    const a = data.assessment;
    const box = document.getElementById("assessment");
    const kid = a.kidney;
    const facts = el("dl", { class: "summary" },
      a.magnesium ? el("div", {}, el("dt", { text: "Serum Mg" }), el("dd", {}, a.magnesium.reported + " (" + a.magnesium.status + ")")) : null,
      el("div", {}, el("dt", { text: "AKI stage (KDIGO)" }), el("dd", { text: String(kid.current_stage) + (kid.aki_stage !== kid.current_stage ? " (peak " + kid.aki_stage + ")" : "") })),
      kid.creatinine_mg_dl !== null ? el("div", {}, el("dt", { text: "Creatinine" }), el("dd", { text: fmtNum(kid.creatinine_mg_dl) + " mg/dL" })) : null,
      kid.crcl !== null ? el("div", {}, el("dt", { text: "CrCl" }), el("dd", { title: kid.crcl_note || "", text: fmtNum(kid.crcl, 0) + " mL/min" })) :
        (kid.egfr !== null ? el("div", {}, el("dt", { text: "eGFR" }), el("dd", { title: kid.egfr_note || "", text: fmtNum(kid.egfr, 0) })) : null));
    const findings = el("ul", { class: "findings" }, a.findings.map((f) => el("li", { class: "finding " + f.severity },
      el("div", {}, badge(f.severity), " ", el("strong", { text: f.code.replaceAll("_", " ") })),
      el("p", { class: "msg", text: f.message }),
      el("div", { class: "refs" }, evidenceLinks(f.evidence)))));
    const plan = a.plan;
    const planBox = plan && plan.regimen ? el("div", { class: "plan" },
      el("strong", { text: "Plan: " }), plan.regimen,
      plan.adjustments.length ? el("p", { class: "muted", text: plan.adjustments.join("; ") }) : null,
      plan.recheck ? el("p", { class: "muted", text: plan.recheck }) : null) : null;
    box.replaceChildren(facts, a.findings.length ? findings : el("p", { class: "muted", text: "No finding." }), planBox,
      a.warnings.length ? el("ul", { class: "notes" }, a.warnings.map((w) => el("li", { text: w }))) : null,
      el("p", { class: "notes", text: a.disclaimer }));
    document.getElementById("sources").replaceChildren(...data.sources.map((s) => el("li", {},
      s.url ? el("a", { href: s.url, target: "_blank", rel: "noopener noreferrer", text: s.citation }) : s.citation,
      " ", el("span", { class: "tag", title: "verification", text: s.verification }))));
    // form defaults from the chart
    const form = document.getElementById("planner");
    if (a.magnesium) form.baseline_mg_dl.placeholder = fmtNum(a.magnesium.value_mg_dl);
    if (kid.crcl !== null || kid.egfr !== null) form.crcl_ml_min.placeholder = fmtNum(kid.crcl !== null ? kid.crcl : kid.egfr, 0);
  }

  async function loadAssessment() {
    renderAssessment(await api(base + "/assessment"));
  }

  function planBody(form) {
    const body = { mode: form.mode.value };
    const nums = body.mode === "regimen"
      ? ["loading_g", "loading_over_min", "rate_g_per_h", "maintenance_h"] : ["target_low_mg_dl", "target_high_mg_dl"];
    for (const n of nums.concat(["horizon_h", "weight_kg", "crcl_ml_min", "baseline_mg_dl"])) {
      const v = form[n].value.trim();
      if (v !== "") body[n] = Number(v);
    }
    body.jurisdiction = form.jurisdiction.value;
    body.emergency = form.emergency.checked;
    body.individualise = form.individualise.checked;
    return body;
  }

  function renderPlan(p) {
    document.getElementById("plan-result").hidden = false;
    document.getElementById("plan-warnings").replaceChildren(...p.warnings.map((w) =>
      el("div", { class: "warn-box", role: "alert", text: "⚠ " + w })));
    const band = p.peak_interval_mg_dl ? " (" + Math.round(p.level * 100) + "% " + p.peak_interval_mg_dl.map((v) => fmtNum(v)).join("–") + ")" : "";
    const r = p.risk;
    const harm = r.p_harm === null ? "not sampled"
      : (Math.round(r.p_harm * r.samples) === 0 ? "< " + (r.p_harm_upper_95 * 100).toFixed(1) + "%"
        : (r.p_harm * 100).toFixed(1) + "%");
    const items = [
      ["Regimen", p.regimen],
      ["Predicted peak", fmtNum(p.peak_mg_dl) + " mg/dL at " + fmtNum(p.peak_time_h, 1) + " h" + band],
      ["P(in target)", (r.p_target === null ? "not sampled" : (r.p_target * 100).toFixed(0) + "%") + " inside " +
        r.target_mg_dl.map((v) => fmtNum(v)).join("–") + " mg/dL (" + r.context + ") at the end of the plan"],
      ["P(peak > harm level)", harm + " (" + fmtNum(p.toxicity_mg_dl) + " mg/dL: " + p.toxicity_meaning + ")"],
      ["Model", (p.individualised ? "individualised (MAP) · " : "population · ") + p.model],
      ["Built in", p.population + (p.outside_population.length ? " — this patient is outside it: " +
        p.outside_population.join("; ") : "")],
    ];
    document.getElementById("plan-summary").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
    document.querySelector("#plan-limits tbody").replaceChildren(...p.limits.map((c) => el("tr", {},
      el("td", { title: c.meaning, text: c.meaning }),
      el("td", { class: "num", text: c.value === null ? "push" : fmtNum(c.value) + " " + c.unit }),
      el("td", { class: "num", text: c.limit + " " + c.unit }),
      el("td", { class: c.ok ? "ok" : "exceeded", text: c.ok ? "within" : "EXCEEDED" }))));
    const notes = p.notes.concat(p.finder ? p.finder.notes : [], [p.model_source, p.disclaimer]);
    document.getElementById("plan-notes").replaceChildren(...notes.map((n) => el("li", { text: n })));
    doseSpec = p.vega_lite;
    return drawDose();
  }

  function wire() {
    const form = document.getElementById("planner");
    form.addEventListener("change", (ev) => {
      if (ev.target.name !== "mode") return;
      const target = form.mode.value === "target";
      form.querySelector(".regimen-fields").disabled = target;
      form.querySelector(".regimen-fields").hidden = target;
      form.querySelector(".target-fields").disabled = !target;
      form.querySelector(".target-fields").hidden = !target;
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const err = document.getElementById("planner-error");
      err.hidden = true;
      const button = document.getElementById("plan-submit");
      button.disabled = true;
      try {
        const plan = await api(base + "/dose-plan", { method: "POST", headers: { "Content-Type": "application/json" },
                                                       body: JSON.stringify(planBody(form)) });
        await renderPlan(plan);
      } catch (e) {
        if (!(e instanceof AuthNeeded)) { err.textContent = e.message; err.hidden = false; }
      } finally {
        button.disabled = false;
      }
    });
    let resize = null;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(drawTimeline, 200); });
  }

  async function start() {
    document.getElementById("patient-title").textContent = "Patient " + pid;
    document.title = "mgaki · " + pid;
    if (!wired) { wire(); wired = true; }
    try {
      await Promise.all([loadTimeline(), loadAssessment()]);
    } catch (e) {
      if (e instanceof AuthNeeded) return;
      pageError(e.status === 404 ? "The service holds no data for this patient." : "Could not load the patient: " + e.message);
    }
  }

  boot(start);
})();

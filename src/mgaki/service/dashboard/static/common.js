/* mgaki dashboard: sign-in (bearer token in sessionStorage), API calls, small DOM helpers. */
"use strict";
(function () {
  const KEY = "mgaki.token";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  class AuthNeeded extends Error {}

  function showLogin(message) {
    document.getElementById("content").hidden = true;
    document.getElementById("signout").hidden = true;
    document.getElementById("login").hidden = false;
    const err = document.getElementById("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    document.getElementById("token").focus();
  }

  function showContent() {
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    document.getElementById("signout").hidden = false;
  }

  /** Describe an error answer: FastAPI's 422 lists each field; the service's own errors say {error}. */
  function describe(status, body) {
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((d) => {
        const where = (d.loc || []).filter((p) => p !== "body").join(".");
        return (where ? where + ": " : "") + String(d.msg).replace(/^Value error, /, "");
      }).join("; ");
    }
    if (body && body.error) return body.error;
    if (body && body.issue) return body.issue.map((i) => i.diagnostics).join("; ");
    return "HTTP " + status;
  }

  async function api(path, options) {
    const token = sessionStorage.getItem(KEY);
    if (!token) { showLogin(); throw new AuthNeeded("no token"); }
    const opts = options || {};
    const headers = Object.assign({ Accept: "application/json", Authorization: "Bearer " + token }, opts.headers || {});
    const resp = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY);
      showLogin("The token was refused (" + describe(resp.status, body) + "). Sign in again.");
      throw new AuthNeeded("refused");
    }
    if (!resp.ok) {
      const err = new Error(describe(resp.status, body));
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  /** Wire the sign-in form and sign-out button; call start() whenever a token is available. */
  function boot(start) {
    document.getElementById("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = document.getElementById("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      document.getElementById("token").value = "";
      showContent();
      start();
    });
    document.getElementById("signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showLogin();
    });
    if (sessionStorage.getItem(KEY)) { showContent(); start(); } else { showLogin(); }
  }

  let zone = "UTC";  // the site's time zone (service config `timezone`), sent with every page's data

  function setZone(tz) { if (tz) zone = tz; }

  /** A stored (UTC) time in the site's time zone, with the zone's short name. */
  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    return d.toLocaleString("en-GB", { timeZone: zone, day: "2-digit", month: "short", year: "numeric",
                                       hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
  }

  function fmtNum(v, digits) {
    return v === null || v === undefined ? "" : Number(v).toFixed(digits === undefined ? 2 : digits);
  }

  function badge(severity) {
    return el("span", { class: "badge " + (severity || "none"), text: severity || "none" });
  }

  window.Mgaki = { el, api, boot, fmtTime, fmtNum, badge, AuthNeeded, showLogin, setZone };
})();

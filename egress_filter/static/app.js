// The dashboard's only script: the live tail of the Events page, and the
// Overview's "Monitor for N minutes" switch.
// Hand-written and dependency-free, so it ships in the package, works offline
// and needs no upkeep of a framework; rows are built with textContent, never
// innerHTML, so a name such as <script> stays text.
"use strict";
(function () {
  var box = document.getElementById("events");
  var toggle = document.getElementById("tail");
  if (!box || box.dataset.live !== "1") { return; }
  var newest = parseInt(box.dataset.newest || "0", 10) || 0;
  var query = box.dataset.query || "";
  var body = box.querySelector("tbody");
  var busy = false;

  function cell(tr, text) {
    var td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    tr.appendChild(td);
    return td;
  }

  function row(ev) {
    var eg = ev.egress || {};
    var src = ev.source || {};
    var tr = document.createElement("tr");
    tr.className = "new";
    cell(tr, ev["@timestamp"]);
    cell(tr, eg.component);
    cell(tr, eg.action);
    cell(tr, eg.kind);
    var name = cell(tr, "");
    var span = document.createElement("span");
    span.className = "name";
    span.textContent = eg.value || "";
    name.appendChild(span);
    cell(tr, (eg.apps || []).join(", "));
    cell(tr, src.ip);
    cell(tr, eg.group);
    cell(tr, eg.rule);
    var why = cell(tr, "");
    var a = document.createElement("a");
    a.href = "/explain?" + new URLSearchParams({target: eg.value || "", client: src.ip || "", kind: eg.kind || ""});
    a.textContent = "why?";
    why.appendChild(a);
    return tr;
  }

  function poll() {
    if (busy || (toggle && !toggle.checked)) { return; }
    busy = true;
    var url = "/api/events?" + (query ? query + "&" : "") + "limit=200&after=" + newest;
    fetch(url, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (doc) {
      if (!doc || !doc.events.length) { return; }
      for (var i = doc.events.length - 1; i >= 0; i--) {
        body.insertBefore(row(doc.events[i]), body.firstChild);
      }
      newest = Math.max(newest, doc.events[0]._id);
      while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
    }).catch(function () { /* the next tick tries again */ }).then(function () { busy = false; });
  }
  setInterval(poll, 1000);
})();

// The "Monitor for N minutes" switch: POST /api/pause with the token as a
// Bearer header (never a cookie, so another site cannot post it for you).
(function () {
  var form = document.getElementById("pause-form");
  if (!form || form.dataset.writable !== "1") { return; }
  var minutes = document.getElementById("pause-minutes");
  var token = document.getElementById("pause-token");
  var go = document.getElementById("pause-go");
  var resume = document.getElementById("pause-resume");
  var status = document.getElementById("pause-status");
  var message = document.getElementById("pause-message");

  function label() {
    var n = parseInt(minutes.value, 10);
    go.textContent = "Monitor for " + (n > 0 ? n : "N") + " minute" + (n === 1 ? "" : "s");
  }

  function show(doc) {
    if (!doc) { return; }
    if (doc.ok && doc.paused) {
      status.textContent = "Monitoring only: " + doc.reason + ".";
      status.dataset.paused = "1";
    } else if (doc.ok) {
      status.textContent = "Enforcing (mode " + doc.mode + ").";
      status.dataset.paused = "0";
    }
  }

  function send(body) {
    message.textContent = "";
    message.className = "";
    // Built from origin, never the page's URL: one that carries user:password@ cannot be fetched.
    fetch(location.origin + "/api/pause", {
      method: "POST",
      credentials: "omit",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token.value},
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (doc) { return {code: r.status, doc: doc}; });
    }).then(function (res) {
      if (res.code === 200) {
        show(res.doc);
        message.textContent = body.resume ? "Enforcement resumed." : "Paused: blocks are logged, not enforced.";
      } else {
        message.className = "error";
        message.textContent = "Refused (" + res.code + "): " + (res.doc.error || "");
      }
    }).catch(function (e) {
      message.className = "error";
      message.textContent = "Failed: " + e;
    });
  }

  minutes.addEventListener("input", label);
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    send({minutes: parseInt(minutes.value, 10)});
  });
  resume.addEventListener("click", function () { send({resume: true}); });
  label();
})();

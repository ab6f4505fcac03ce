// The dashboard's only script: the live tail of the Events page.
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

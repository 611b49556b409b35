// ApprovalPlane approver page: live updates over server-sent events, ticking
// clocks, and a guard that asks for a reason before rejecting. Everything works
// without it: forms post and pages reload as plain HTML.
(function () {
  "use strict";
  var body = document.body;

  function fmt(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-since]").forEach(function (t) {
      t.textContent = fmt(now - Number(t.dataset.since));
    });
    document.querySelectorAll("time[data-until]").forEach(function (t) {
      var left = Number(t.dataset.until) - now;
      t.textContent = left > 0 ? "in " + fmt(left) : "now";
    });
  }

  // Rejecting needs a reason: say so before the round trip.
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button#reject");
    if (!b) return;
    var r = document.getElementById("reason");
    if (r && !r.value.trim()) {
      e.preventDefault();
      var form = document.getElementById("decide");
      var p = document.getElementById("decision-error");
      if (!p) {
        p = document.createElement("p");
        p.id = "decision-error";
        p.className = "error";
        p.setAttribute("role", "alert");
        form.parentNode.insertBefore(p, form);
      }
      p.textContent = "A reason is required to reject.";
      r.focus();
    }
  });

  if (!body.dataset.live) return;
  setInterval(tick, 1000);

  var region = document.getElementById("live");
  var pending = null;
  var running = false;
  window.apUpdates = 0;

  // Re-renders the live region from the server, keeping a reason being typed.
  function refresh() {
    if (running) { pending = true; return; }
    running = true;
    pending = false;
    fetch(location.pathname + location.search, {
      headers: { "X-AP-Partial": "1" }, credentials: "same-origin", cache: "no-store"
    }).then(function (res) {
      if (res.status === 401) { location.reload(); return null; }
      return res.text();
    }).then(function (html) {
      if (html === null || html === undefined) return;
      var old = document.getElementById("reason");
      var typed = old ? old.value : "";
      var focused = old && document.activeElement === old;
      region.innerHTML = html;
      var fresh = document.getElementById("reason");
      if (fresh && typed) fresh.value = typed;
      if (fresh && focused) fresh.focus();
      tick();
      window.apUpdates += 1;
      body.dataset.updatedAt = String(Date.now());
    }).catch(function () {}).then(function () {
      running = false;
      if (pending) refresh();
    });
  }

  var dot = document.getElementById("live-status");
  var es = new EventSource("/ui/events");
  es.onopen = function () { if (dot) dot.classList.add("on"); body.dataset.feed = "open"; };
  es.onerror = function () { if (dot) dot.classList.remove("on"); body.dataset.feed = "closed"; };
  es.addEventListener("approval", function (e) {
    var ev;
    try { ev = JSON.parse(e.data); } catch (_) { return; }
    if (body.dataset.page === "detail" && body.dataset.approval !== ev.id) return;
    refresh();
  });
  es.addEventListener("resync", refresh);
})();

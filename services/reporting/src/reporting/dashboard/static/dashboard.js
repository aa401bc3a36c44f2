// Shinchoku dashboard: a tooltip for the measure grid and the overview's live refresh. No framework, no build.
(function () {
  "use strict";

  // Tooltip: one shared element, shown on pointer hover and on keyboard focus, hidden with Escape.
  var tip = document.getElementById("tip");
  function showTip(cell) {
    if (!tip) return;
    tip.textContent = "";
    var head = document.createElement("strong");
    head.textContent = cell.dataset.id + " " + cell.dataset.title;
    var leads = document.createElement("span");
    leads.textContent = cell.dataset.leads;
    var status = document.createElement("span");
    status.className = "tip-status";
    status.textContent = cell.dataset.label;
    tip.append(head, leads, document.createElement("br"), status);
    tip.hidden = false;
    var r = cell.getBoundingClientRect();
    var top = window.scrollY + r.bottom + 6;
    var left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
    tip.style.top = top + "px";
    tip.style.left = Math.max(window.scrollX + 4, left) + "px";
    cell.setAttribute("aria-describedby", "tip");
  }
  function hideTip(cell) {
    if (!tip) return;
    tip.hidden = true;
    if (cell) cell.removeAttribute("aria-describedby");
  }
  function cellOf(target) { return target && target.closest ? target.closest("a.cell") : null; }
  document.addEventListener("mouseover", function (e) { var c = cellOf(e.target); if (c) showTip(c); });
  document.addEventListener("mouseout", function (e) { var c = cellOf(e.target); if (c) hideTip(c); });
  document.addEventListener("focusin", function (e) { var c = cellOf(e.target); if (c) showTip(c); });
  document.addEventListener("focusout", function (e) { var c = cellOf(e.target); if (c) hideTip(c); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") hideTip(cellOf(document.activeElement)); });

  // Live refresh: ask a cheap fingerprint every few seconds; when it changes, swap in the new overview body.
  var live = document.getElementById("live");
  if (!live || !window.fetch) return;
  var statusEl = document.getElementById("live-status");
  var interval = Math.max(1, Number(live.dataset.interval || "5")) * 1000;
  var version = live.dataset.version || null;
  var busy = false;

  function check() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(live.dataset.liveUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return null;
        if (version === null) { version = body.version; return null; }
        if (body.version === version) return null;
        return fetch(live.dataset.partialUrl, { cache: "no-store" }).then(function (r) {
          if (!r.ok) return;
          return r.text().then(function (html) {
            var focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
            live.innerHTML = html;
            version = body.version;
            live.dataset.version = version;
            live.classList.remove("flash"); void live.offsetWidth; live.classList.add("flash");
            if (focusedId) {
              var again = live.querySelector('a.cell[data-id="' + focusedId + '"]');
              if (again) again.focus();
            }
            if (statusEl) statusEl.textContent = live.dataset.updatedText + " (" + new Date().toLocaleTimeString(document.documentElement.lang) + ")";
          });
        });
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }
  check();
  window.setInterval(check, interval);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) check(); });
})();

// Sign-in link of `shinchoku up`: /dashboard/signin#token=…. The token is in the fragment, which no server
// log and no Referer sees; it is moved into the form (with its CSRF field) and sent, and the address cleaned.
(function () {
  "use strict";
  var form = document.getElementById("signin-form");
  var field = document.getElementById("signin-token");
  if (!form || !field || location.hash.indexOf("#token=") !== 0) return;
  field.value = decodeURIComponent(location.hash.slice("#token=".length));
  history.replaceState(null, "", location.pathname + location.search);
  form.submit();
})();

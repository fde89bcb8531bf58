// dam library browser: a little plain JavaScript. Pages work without it.
(function () {
  "use strict";
  var root = document.documentElement;

  // Dark or light: the system's choice unless the person picked one here.
  var saved = localStorage.getItem("dam-theme");
  if (saved) root.setAttribute("data-theme", saved);
  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme");
    if (toggle) toggle.addEventListener("click", function () {
      var dark = root.getAttribute("data-theme") === "dark" ||
        (!root.getAttribute("data-theme") && matchMedia("(prefers-color-scheme: dark)").matches);
      var next = dark ? "light" : "dark";
      root.setAttribute("data-theme", next);
      localStorage.setItem("dam-theme", next);
    });

    // Filters apply as soon as one changes.
    var filters = document.getElementById("filters");
    if (filters) filters.addEventListener("change", function () { filters.submit(); });

    // Copy a path.
    document.querySelectorAll("button.copy").forEach(function (b) {
      b.addEventListener("click", function () {
        var text = b.getAttribute("data-copy");
        var done = function () { b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy path"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done);
        } else {
          var area = document.createElement("textarea");
          area.value = text; document.body.appendChild(area); area.select();
          document.execCommand("copy"); document.body.removeChild(area); done();
        }
      });
    });

    // Infinite scroll: the "Next page" link is fetched when it comes into view.
    var grid = document.getElementById("grid");
    function hookMore() {
      var more = grid && grid.querySelector("a.more");
      if (!more || !("IntersectionObserver" in window)) return;
      var busy = false;
      var seen = new IntersectionObserver(function (entries) {
        if (!entries[0].isIntersecting || busy) return;
        busy = true;
        fetch(more.getAttribute("data-next"), { credentials: "same-origin" })
          .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
          .then(function (html) {
            seen.disconnect();
            var box = document.createElement("div");
            box.innerHTML = html;
            more.remove();
            while (box.firstChild) grid.appendChild(box.firstChild);
            hookMore();
          })
          .catch(function () { busy = false; });
      }, { rootMargin: "800px" });
      seen.observe(more);
    }
    hookMore();

    // Quarantine needs a folder; prefer_root needs a root.
    var action = document.getElementById("plan-action");
    function showDir() {
      var dir = document.querySelector(".dir-choice");
      if (dir) dir.style.display = action.value === "quarantine" ? "" : "none";
    }
    if (action) { action.addEventListener("change", showDir); showDir(); }
    var rule = document.getElementById("rule");
    function showRoot() {
      var r = document.querySelector(".root-choice");
      if (r) r.style.display = rule.value === "prefer_root" ? "" : "none";
    }
    if (rule) { rule.addEventListener("change", showRoot); showRoot(); }

    // The Status page refreshes itself.
    var status = document.getElementById("status-body");
    if (status) setInterval(function () {
      fetch(status.getAttribute("data-refresh"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html) status.innerHTML = html; })
        .catch(function () {});
    }, 5000);

    // A page shown while the catalogue is being written looks again by itself.
    if (document.querySelector(".banner.busy")) setTimeout(function () { location.reload(); }, 10000);
  });

  // Keyboard: "/" searches, arrows move between cards, Enter opens one.
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
    if (e.key === "/" && !typing) {
      var s = document.querySelector(".search input");
      if (s) { e.preventDefault(); s.focus(); s.select(); }
      return;
    }
    if (typing || ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].indexOf(e.key) < 0) return;
    var cards = Array.prototype.slice.call(document.querySelectorAll(".grid .card"));
    if (!cards.length) return;
    var i = cards.indexOf(document.activeElement);
    if (i < 0) { cards[0].focus(); e.preventDefault(); return; }
    var top = cards[0].offsetTop, perRow = 0;
    while (perRow < cards.length && cards[perRow].offsetTop === top) perRow++;
    var step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[e.key];
    var j = Math.max(0, Math.min(cards.length - 1, i + step));
    cards[j].focus();
    cards[j].scrollIntoView({ block: "nearest" });
    e.preventDefault();
  });
})();

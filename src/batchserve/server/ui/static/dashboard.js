// Live progress: one server-sent event stream per page, for the unfinished batches it shows
// (the elements with data-live-ids list them). The server sends a batch's figures when they
// change; this script puts them in its progress bars and state labels. Pages work without it.
(function () {
  "use strict";
  let source = null;

  function number(value) {
    return Math.round(value).toLocaleString("en-US");
  }

  function duration(seconds) {
    if (seconds < 60) return seconds.toFixed(0) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.floor(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function describe(p) {
    let text = number(p.done) + " / " + number(p.total) + " done";
    if (p.failed) text += ", " + number(p.failed) + " failed";
    if (p.cancelled) text += ", " + number(p.cancelled) + " cancelled";
    if (p.rate) text += " · " + p.rate.toFixed(p.rate < 100 ? 2 : 0) + " records/s";
    if (p.eta) text += " · about " + duration(p.eta) + " left";
    return text;
  }

  function show(p) {
    document.querySelectorAll('.progress[data-batch="' + CSS.escape(p.id) + '"]').forEach(function (bar) {
      const meter = bar.querySelector("progress");
      meter.max = p.total || 1;
      meter.value = p.done;
      meter.textContent = p.percent.toFixed(1) + "%";
      bar.querySelector("[data-progress-text]").textContent = describe(p);
      if (p.final) bar.removeAttribute("data-live");
      const row = bar.closest("[data-batch-row], #summary, tr");
      const label = row && row.querySelector("[data-state]");
      if (label && label.textContent !== p.state) {
        label.textContent = p.state;
        label.className = "state state-" + p.state;
      }
    });
  }

  function watch() {
    if (source) source.close();
    source = null;
    const ids = new Set();
    document.querySelectorAll("[data-live-ids]").forEach(function (el) {
      el.dataset.liveIds.split(",").forEach(function (id) { if (id) ids.add(id); });
    });
    if (!ids.size || !window.EventSource) return;
    source = new EventSource("/ui/progress?ids=" + encodeURIComponent(Array.from(ids).join(",")));
    source.addEventListener("progress", function (event) { show(JSON.parse(event.data)); });
    source.addEventListener("done", function () { source.close(); source = null; });
  }

  // A part of a page asked for by htmx that ends in an error (a filter that is not right):
  // the address is opened as a page, whose error page says what was wrong.
  document.addEventListener("htmx:responseError", function (event) {
    const info = event.detail.pathInfo || {};
    const path = info.finalRequestPath || info.requestPath;
    if (path) window.location.assign(path);
  });

  document.addEventListener("DOMContentLoaded", watch);
  // A part of the page replaced by htmx (a filtered listing) may show other batches.
  document.addEventListener("htmx:afterSettle", watch);
  window.addEventListener("pagehide", function () { if (source) source.close(); });
})();

/* cnetd web UI: a few helpers on top of htmx (no framework, no network but this agent). */
(function () {
  "use strict";

  var flash = function (message) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = message;
    box.hidden = false;
    window.clearTimeout(box._timer);
    box._timer = window.setTimeout(function () { box.hidden = true; }, 8000);
  };

  /* A failed request says why, using the API's error envelope when there is one. */
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    var message = "The agent answered " + xhr.status + " " + (xhr.statusText || "");
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.error) { message = body.error; }
    } catch (ignored) { /* not JSON */ }
    flash(message);
  });
  document.addEventListener("htmx:sendError", function () {
    flash("The agent did not answer; is it still running?");
  });

  /* A task's summary has two writers, the live stream and the Stop button's answer,
     on two connections: their messages can arrive in either order. A task only moves
     forward (data-stage never goes down), so a summary of an earlier stage than the one
     shown is stale, e.g. an answer saying "running, stop requested" that lands after the
     stream's "stopped" (which, the stream having ended, nothing would correct). */
  var stageIn = function (html) {
    var m = /\bdata-stage="(\d+)"/.exec(typeof html === "string" ? html : "");
    return m ? Number(m[1]) : null;
  };
  var isStale = function (target, html) {
    var shown = target && target.querySelector ? target.querySelector("[data-stage]") : null;
    var incoming = stageIn(html);
    return shown !== null && incoming !== null && incoming < Number(shown.getAttribute("data-stage"));
  };
  document.addEventListener("htmx:beforeSwap", function (evt) {
    if (isStale(evt.detail.target, evt.detail.serverResponse)) { evt.detail.shouldSwap = false; }
  });
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    if (isStale(evt.target, evt.detail && evt.detail.data)) { evt.preventDefault(); }
  });

  /* A box that scrolls (a long result, a long timeline) must be reachable with the
     keyboard to be scrolled with it: it joins the Tab order only while it overflows. */
  var keyboardScrollers = function () {
    document.querySelectorAll("[data-scroller]").forEach(function (box) {
      if (box.scrollHeight > box.clientHeight + 1 || box.scrollWidth > box.clientWidth + 1) {
        box.setAttribute("tabindex", "0");
      } else {
        box.removeAttribute("tabindex");
      }
    });
  };
  document.addEventListener("htmx:afterSettle", keyboardScrollers);
  window.addEventListener("resize", keyboardScrollers);

  /* A live stream that ended (the task is over) stops calling itself live. */
  document.addEventListener("htmx:sseClose", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) { el.hidden = true; });
  });

  /* Logs follow the newest line while the reader is at the bottom. */
  var nearBottom = function (el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 48; };
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    var log = evt.target.closest && evt.target.closest(".log");
    if (log) { log.dataset.follow = nearBottom(log) ? "1" : ""; }
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    var log = evt.target.closest && evt.target.closest(".log");
    if (log && log.dataset.follow) { log.scrollTop = log.scrollHeight; }
  });
  var bottomAll = function () {
    document.querySelectorAll(".log").forEach(function (log) { log.scrollTop = log.scrollHeight; });
    keyboardScrollers();
  };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", bottomAll);
  } else {
    bottomAll();
  }
})();

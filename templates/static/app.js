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

  /* Keyboard focus across swaps. htmx gives the focus back to an element whose id comes
     back; any other focused element that a swap (an answer, a poll, the live stream)
     removes would leave the focus nowhere, and the next Tab would start over at the top of
     the page. So: after the user's own request, the focus goes to what the answer wants seen
     (the first field in error, the form's error, else an element marked data-swap-focus: a
     result, a new status); and wherever the focus was lost, to the same control in the new
     content (a link to the same place, a button with the same words, a field of the same
     name), else to a data-swap-focus element, else to the new content itself. */
  var focusBefore = null;
  var noteFocus = function () { focusBefore = document.activeElement; };
  document.addEventListener("htmx:beforeSwap", noteFocus);
  document.addEventListener("htmx:sseBeforeMessage", noteFocus);

  var sameControl = function (root, old) {
    var tag = old && old.tagName ? old.tagName.toLowerCase() : "";
    var found = null;
    root.querySelectorAll(tag || "*").forEach(function (el) {
      if (found) { return; }
      if ((tag === "a" && el.getAttribute("href") === old.getAttribute("href")) ||
          (tag === "button" && el.textContent.trim() === old.textContent.trim()) ||
          ((tag === "input" || tag === "select" || tag === "textarea") && el.name && el.name === old.name)) {
        found = el;
      }
    });
    return found;
  };
  var focusOn = function (el) {
    if (!el) { return false; }
    if (!el.matches("a[href], button, input, select, textarea, [tabindex]")) { el.setAttribute("tabindex", "-1"); }
    el.focus();
    return document.activeElement === el;
  };
  document.addEventListener("htmx:afterSwap", function (evt) {
    var root = evt.target;
    if (!root || !root.isConnected || !root.querySelector) { return; }
    var config = evt.detail && evt.detail.requestConfig;
    var byUser = Boolean(config && config.triggeringEvent);  /* not a poll, not the stream */
    if (byUser && focusOn(root.querySelector("[aria-invalid='true']") || root.querySelector(".form-error") ||
                          root.querySelector("[data-swap-focus]"))) { return; }
    var active = document.activeElement;
    var lost = focusBefore && focusBefore !== document.body && !focusBefore.isConnected &&
      (!active || active === document.body);
    if (lost) {
      focusOn(sameControl(root, focusBefore)) || focusOn(root.querySelector("[data-swap-focus]")) || focusOn(root);
    }
  });

  /* hx-confirm asks in the page's own dialog, not window.confirm: a modal <dialog> keeps
     the keyboard inside it, starts on Cancel (the harmless answer), closes on Escape and
     gives the focus back to the button that asked. */
  document.addEventListener("htmx:confirm", function (evt) {
    var box = document.getElementById("confirm");
    if (!evt.detail.question || !box || typeof box.showModal !== "function") { return; }
    evt.preventDefault();
    var asker = evt.detail.elt.querySelector ? evt.detail.elt.querySelector("button[type=submit]") : null;
    box.querySelector("#confirm-text").textContent = evt.detail.question;
    box.querySelector("button[value=ok]").textContent = asker ? asker.textContent.trim() : "OK";
    box.returnValue = "";
    box.addEventListener("close", function () {
      if (box.returnValue === "ok") { evt.detail.issueRequest(true); }
    }, { once: true });
    box.showModal();
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

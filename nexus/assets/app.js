// The console's one script: the live parts only. Every page works without it.
// - The jobs list (#rows in a [data-live] page) refreshes every 2 s, paused by the Pause button
//   and while the tab is hidden.
// - A job's timeline (#timeline[data-stream]) follows the job's event stream; chunk events append
//   their text to #output; when the server ends the stream (the job is final) it is closed for
//   good (no reconnect) and the job's fields are fetched once more.
"use strict";

(function () {
  function swap(doc, id) {
    var fresh = doc.getElementById(id);
    var old = document.getElementById(id);
    if (fresh && old) {
      old.replaceWith(document.importNode(fresh, true));
    }
  }

  function refreshFrom(url, ids) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok || r.redirected) { throw new Error("refresh answered " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        ids.forEach(function (id) { swap(doc, id); });
      });
  }

  function liveList(page) {
    var paused = false;
    var button = document.getElementById("pause");
    var status = document.getElementById("live-status");
    if (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        paused = !paused;
        button.textContent = paused ? "Resume" : "Pause";
        if (status) { status.textContent = paused ? "paused" : "live"; }
      });
    }
    if (status) { status.textContent = "live"; }
    var busy = false;
    setInterval(function () {
      if (paused || busy || document.hidden) { return; }
      busy = true;
      refreshFrom(location.href, page.dataset.live.split(" "))
        .catch(function () { if (status) { status.textContent = "refresh failed"; } })
        .then(function () { busy = false; });
    }, 2000);
  }

  var EVENT_TYPES = ["claimed", "start", "chunk", "progress", "end", "error", "cancelled",
    "message", "received", "retry"];

  function follow(timeline) {
    var output = document.getElementById("output");
    var source = new EventSource(timeline.dataset.stream);
    var onEvent = function (e) {
      if (e.data === undefined) { return; } // the EventSource's own `error`, handled below
      var ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      var li = document.createElement("li");
      li.className = "event event-" + e.type;
      li.textContent = e.type + " " + (ev.timestamp || "");
      timeline.appendChild(li);
      if (e.type === "chunk" && output && ev.data && typeof ev.data.content === "string") {
        output.hidden = false;
        output.textContent += ev.data.content;
      }
    };
    EVENT_TYPES.forEach(function (t) { source.addEventListener(t, onEvent); });
    source.addEventListener("error", function (e) {
      if (e.data !== undefined) { return; }
      // The server ends the stream once the job is final: never reconnect.
      source.close();
      timeline.dataset.closed = "true";
      refreshFrom(location.href, ["fields"]).catch(function () {});
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.querySelector("[data-live]");
    if (page) { liveList(page); }
    var timeline = document.querySelector("#timeline[data-stream]");
    if (timeline) { follow(timeline); }
  });
})();

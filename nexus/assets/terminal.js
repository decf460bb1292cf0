// The console's node terminal: wires the vendored xterm.js screen to the control plane's
// WebSocket (/ui/nodes/ID/terminal/ws), which the plane bridges to the node's terminal over the
// mesh. Frames are the node terminal's own JSON: `input`/`resize` out, `output`/`error` in.
(function () {
  "use strict";
  var el = document.getElementById("terminal");
  var status = document.getElementById("terminal-status");
  if (!el || typeof Terminal === "undefined") { return; }
  var term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
  term.open(el);
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + location.host + el.dataset.ws + "?cols=" + term.cols + "&rows=" + term.rows;
  var ws = new WebSocket(url);
  var utf8 = new TextEncoder();

  function toBase64(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) { s += String.fromCharCode(bytes[i]); }
    return btoa(s);
  }
  function fromBase64(text) {
    var bin = atob(text);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }
  function say(text, bad) {
    status.textContent = text;
    status.className = bad ? "error" : "muted";
  }
  function send(frame) {
    if (ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(frame)); }
  }

  ws.onopen = function () { say("connected"); term.focus(); };
  ws.onmessage = function (ev) {
    var f;
    try { f = JSON.parse(ev.data); } catch (e) { return; }
    if (f.type === "output" && f.payload) {
      term.write(fromBase64(f.payload));
    } else if (f.type === "error") {
      say(f.error || "error", true);
      term.write("\r\n\x1b[31m" + (f.error || "error") + "\x1b[0m\r\n");
    }
  };
  ws.onclose = function (ev) {
    if (status.className !== "error") {
      say("closed" + (ev.reason ? ": " + ev.reason : ""), ev.code !== 1000);
    }
  };
  term.onData(function (d) { send({ type: "input", payload: toBase64(utf8.encode(d)) }); });
  term.onResize(function (s) { send({ type: "resize", cols: s.cols, rows: s.rows }); });
  window.addEventListener("pagehide", function () { ws.close(1000, "page closed"); });
})();

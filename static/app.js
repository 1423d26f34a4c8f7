// printgate: small progressive enhancement. Pages work without it (forms post and redirect);
// with it, cards update live over Server-Sent Events, a banner says when the gateway is
// unreachable, and uploads show a real progress bar.
"use strict";
(function () {
  var banner = document.getElementById("offline");
  function setOffline(off) { if (banner) banner.hidden = !off; }

  function text(card, field, value) {
    var el = card.querySelector('[data-field="' + field + '"]');
    if (el && value !== undefined && value !== null && el.textContent !== String(value)) el.textContent = value;
  }
  function temp(v) { return v === null || v === undefined ? "–" : Math.round(v); }

  function updatePrinter(p) {
    var card = document.querySelector('[data-printer="' + CSS.escape(p.name) + '"]');
    if (!card) return;
    card.classList.toggle("offline", !p.online);
    text(card, "link", p.link);
    text(card, "gcode_state", p.gcode_state);
    var badge = card.querySelector('[data-field="gcode_state"]');
    if (badge) badge.className = "badge state-" + p.gcode_state;
    text(card, "job", p.job_name || "");
    var bar = card.querySelector('[data-field="percent"]');
    if (bar && p.percent !== null) bar.value = p.percent;
    text(card, "percent-text", p.percent === null ? "" : p.percent + " %");
    text(card, "layer", p.layer);
    text(card, "nozzle", temp(p.nozzle_temp) + " / " + temp(p.nozzle_target) + " °C");
    text(card, "bed", temp(p.bed_temp) + " / " + temp(p.bed_target) + " °C");
    if (p.chamber_temp !== null) text(card, "chamber", temp(p.chamber_temp) + " °C");
    // A printer message (e.g. "Klipper is shutdown: …") appearing or going reloads the card.
    var msg = card.querySelector('[data-field="printer_message"]');
    if (!msg !== !p.printer_message) { location.reload(); return; }
    if (msg) text(card, "printer_message", p.printer_message);
    var plate = card.querySelector('[data-field="plate"]');
    // A plate or HMS change changes what the card offers: reload it from the server.
    if (plate && plate.dataset.plate !== p.plate.state) location.reload();
  }

  if (document.body.dataset.live === "1" && window.EventSource) {
    var es = new EventSource("/live");
    es.onopen = function () { setOffline(false); };
    es.onerror = function () { setOffline(true); };
    es.addEventListener("state", function (e) {
      var s = JSON.parse(e.data);
      s.printers.forEach(updatePrinter);
    });
    es.addEventListener("printer", function (e) { updatePrinter(JSON.parse(e.data)); });
    es.addEventListener("queue", function () { location.reload(); });
  }

  // Upload with a progress bar; the server's redirect (with its notice) is followed after.
  var form = document.querySelector("form.upload");
  if (form && window.XMLHttpRequest && window.FormData) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var bar = document.getElementById("upload-progress");
      var label = document.getElementById("upload-status");
      bar.hidden = false;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) {
          bar.max = e.total; bar.value = e.loaded;
          label.textContent = Math.floor(100 * e.loaded / e.total) + " % uploaded";
        }
      };
      xhr.onload = function () {
        bar.value = bar.max;
        label.textContent = "100 % uploaded — checking the file…";
        location.href = xhr.responseURL || "/";
      };
      xhr.onerror = function () {
        label.textContent = "The upload was interrupted (network). Nothing was queued; try again.";
      };
      xhr.send(new FormData(form));
    });
  }
})();

// printgate: small progressive enhancement. Pages work without it (forms post and redirect back
// with a message); with it, cards and the queue update in place over Server-Sent Events (the
// server sends their HTML, rendered from the same templates as the page), a banner says when the
// gateway is unreachable, actions answer next to their control, and uploads show a progress bar.
// The page is never reloaded under the user: a form being filled is never reset or replaced.
"use strict";
(function () {
  var banner = document.getElementById("offline");
  var offline = false;
  // While the gateway is unreachable the cards are greyed and their actions are off (what they
  // show may be out of date, and a tap could not be sent); the banner says since when.
  function setOffline(off) {
    if (off === offline) return;
    offline = off;
    if (banner) {
      banner.hidden = !off;
      var since = banner.querySelector("[data-since]");
      if (since) since.textContent = off ? " since " + clock(new Date()) : "";
    }
    document.body.classList.toggle("gateway-lost", off);
    disableActions();
  }
  // Buttons inside the live parts: off while the gateway is unreachable (also re-applied after
  // each in-place update, whose fresh markup has them enabled).
  function disableActions() {
    var buttons = document.querySelectorAll("[data-flash-scope] button, [data-flash-scope] a.button");
    for (var i = 0; i < buttons.length; i++) {
      var b = buttons[i];
      if (b.tagName === "A") {
        if (offline) b.setAttribute("aria-disabled", "true"); else b.removeAttribute("aria-disabled");
      } else if (offline && !b.disabled) { b.disabled = true; b.setAttribute("data-offline", ""); }
      else if (!offline && b.hasAttribute("data-offline")) { b.disabled = false; b.removeAttribute("data-offline"); }
    }
  }
  // A card's "Camera picture" link (web/camera.rs): with scripts on, the picture opens small on
  // the card, outside the live-updated part, and a tap again takes a newer one. Nothing is
  // fetched before the tap.
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest && ev.target.closest("a[data-snapshot]");
    if (!link) return;
    ev.preventDefault();
    var holder = link.parentNode;
    var fig = holder.querySelector("figure.card-snapshot");
    if (!fig) {
      fig = document.createElement("figure");
      fig.className = "card-snapshot";
      var img = document.createElement("img");
      img.alt = "Camera picture of the plate of " + link.closest("[data-printer]").getAttribute("data-printer");
      var cap = document.createElement("figcaption");
      cap.setAttribute("role", "status");
      fig.appendChild(img);
      fig.appendChild(cap);
      holder.appendChild(fig);
    }
    var pic = fig.querySelector("img"), caption = fig.querySelector("figcaption");
    caption.textContent = "Asking the camera…";
    fetch(link.getAttribute("href"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.ok) return r.blob();
        return r.text().then(function (t) { throw new Error(t.trim()); });
      })
      .then(function (b) {
        if (pic.src) URL.revokeObjectURL(pic.src);
        pic.src = URL.createObjectURL(b);
        pic.hidden = false;
        caption.textContent = "Taken at " + new Date().toLocaleTimeString() + ". Tap Camera picture again for a newer one.";
      })
      .catch(function (e) {
        pic.hidden = true;
        caption.textContent = e.message || "No camera picture";
      });
  });
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest && ev.target.closest("a.button[aria-disabled=true]");
    if (a) ev.preventDefault();
  });

  // ---- times in the phone's time zone ------------------------------------------------------
  // The server writes times in the gateway's zone; <time datetime> elements are shown in the
  // browser's: data-clock as a clock time ("14:35", or "Fri 14:35" on another day), data-local
  // as a date and time.
  function clock(d) {
    var opts = { hour: "2-digit", minute: "2-digit" };
    if (d.toDateString() !== new Date().toDateString()) opts.weekday = "short";
    return d.toLocaleTimeString([], opts);
  }
  function localTimes(root) {
    var els = (root || document).querySelectorAll("time[data-clock], time[data-local]");
    for (var i = 0; i < els.length; i++) {
      var d = new Date(els[i].getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      els[i].textContent = els[i].hasAttribute("data-clock") ? clock(d) :
        d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
    }
  }
  localTimes(document);

  // ---- what changed, for screen readers ----------------------------------------------------
  // A card's state and plate are announced (politely) when they change; temperatures are not.
  var announcer = document.getElementById("announce");
  var lastSaid = {};
  function announce(p) {
    var now = p.gcode_state + "|" + (p.plate && p.plate.state) + "|" + p.online;
    var before = lastSaid[p.name];
    lastSaid[p.name] = now;
    if (before === undefined || before === now || !announcer) return;
    announcer.textContent = p.name + ": " + (p.online ? p.gcode_state.toLowerCase() : "not connected") +
      (p.plate && p.plate.text ? ". " + p.plate.text : "");
  }
  // How many live messages of each kind the page applied (also read by the browser tests).
  var live = window.printgateLive = { state: 0, printer: 0, queue: 0 };

  // ---- in-place updates -------------------------------------------------------------------
  // Whether `el` holds a form someone is filling: a focused field, a field changed from what
  // the server rendered (a ticked confirmation), or a submission in flight.
  function beingFilled(el) {
    var a = document.activeElement;
    if (a && el.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName) && a.type !== "hidden") return true;
    var fields = el.querySelectorAll("input, select, textarea");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.type === "hidden") continue;
      if (f.type === "checkbox" || f.type === "radio") { if (f.checked !== f.defaultChecked) return true; }
      else if (f.tagName === "SELECT") {
        for (var k = 0; k < f.options.length; k++) if (f.options[k].selected !== f.options[k].defaultSelected) return true;
      } else if (f.value !== f.defaultValue) return true;
    }
    // An opened confirmation (Cancel…) is a form being filled too: an update would close it.
    if (el.querySelector("details[open]")) return true;
    return el.querySelector("form[data-busy]") !== null;
  }

  function sameNode(a, b) {
    return a.nodeType === b.nodeType && a.nodeName === b.nodeName &&
      (a.nodeType !== 1 || a.getAttribute("data-job") === b.getAttribute("data-job"));
  }
  function syncAttributes(to, from) {
    var i, at;
    for (i = to.attributes.length - 1; i >= 0; i--) {
      at = to.attributes[i].name;
      if (!from.hasAttribute(at)) to.removeAttribute(at);
    }
    for (i = 0; i < from.attributes.length; i++) {
      at = from.attributes[i];
      if (to.getAttribute(at.name) !== at.value) to.setAttribute(at.name, at.value);
    }
  }
  // Make the children of `to` equal to those of `from`, touching only what differs: a button
  // whose markup did not change stays the same element, so a tap on it is never lost.
  function morph(to, from) {
    var want = from.childNodes, have = to.childNodes;
    for (var i = 0; i < want.length; i++) {
      var n = want[i], o = have[i];
      if (!o) { to.appendChild(n.cloneNode(true)); continue; }
      if (!sameNode(o, n)) { to.replaceChild(n.cloneNode(true), o); continue; }
      if (o.nodeType === 1) { syncAttributes(o, n); morph(o, n); }
      else if (o.nodeValue !== n.nodeValue) o.nodeValue = n.nodeValue;
    }
    while (have.length > want.length) to.removeChild(to.lastChild);
  }

  var pending = [];
  // Show `html` in the live part `el`, unless a form in it is being filled: then keep it for
  // when the user is done (focus leaves, the form is sent or reset).
  function update(el, html) {
    if (!el || typeof html !== "string" || html === "") return;
    if (beingFilled(el)) {
      pending = pending.filter(function (p) { return p.el !== el; });
      pending.push({ el: el, html: html });
      return;
    }
    var t = document.createElement("template");
    t.innerHTML = html;
    morph(el, t.content);
    localTimes(el);
    disableActions();
  }
  function flushPending() {
    var waiting = pending;
    pending = [];
    waiting.forEach(function (p) { if (p.el.isConnected) update(p.el, p.html); });
  }
  document.addEventListener("focusout", function () { setTimeout(flushPending, 0); });
  document.addEventListener("change", function () { setTimeout(flushPending, 0); });
  document.addEventListener("toggle", function () { setTimeout(flushPending, 0); }, true);

  function updatePrinter(p) {
    var card = document.querySelector('[data-printer="' + CSS.escape(p.name) + '"]');
    if (!card) return;
    card.classList.toggle("offline", !p.online);
    update(card.querySelector('[data-live="card"]'), p.card_html);
    announce(p);
  }
  function updateQueue(html) { update(document.querySelector('[data-live="queue"]'), html); }

  if (document.body.dataset.live === "1" && window.EventSource) {
    var es = new EventSource("/live");
    es.onopen = function () { setOffline(false); };
    es.onerror = function () { setOffline(true); };
    es.addEventListener("state", function (e) {
      var s = JSON.parse(e.data);
      s.printers.forEach(updatePrinter);
      updateQueue(s.queue_html);
      live.state++;
    });
    es.addEventListener("printer", function (e) { updatePrinter(JSON.parse(e.data)); live.printer++; });
    es.addEventListener("queue", function (e) { updateQueue(JSON.parse(e.data).html); live.queue++; });
  }

  // ---- actions answer in place -----------------------------------------------------------
  // A form inside a [data-flash-scope] (a printer card, the queue) is sent in the background;
  // the gateway's answer, done or the reason it was refused, is shown in the scope's
  // [data-flash] live region. Without this script the same post redirects back with the answer.
  function say(flash, text, kind) {
    if (!flash) return;
    flash.className = "flash flash-" + kind;
    flash.textContent = (kind === "refused" ? "Not done: " : "") + text;
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var scope = form.closest && form.closest("[data-flash-scope]");
    if (!scope || form.method.toLowerCase() !== "post" || !window.fetch) return;
    ev.preventDefault();
    if (form.hasAttribute("data-busy")) return; // one submission at a time (no double stops)
    var flash = scope.querySelector("[data-flash]");
    var button = ev.submitter || form.querySelector("button");
    form.setAttribute("data-busy", "");
    if (button) button.disabled = true;
    say(flash, "Sending…", "pending");
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
      credentials: "same-origin"
    }).then(function (r) {
      return r.json().then(function (body) { return { r: r, body: body }; },
        function () { return { r: r, body: null }; });
    }).then(function (a) {
      var b = a.body || {};
      var text = b.message || (b.error && b.error.message) ||
        ("The gateway answered " + a.r.status + " " + a.r.statusText + "; reload the page to see what happened.");
      var done = a.r.ok && b.done === true;
      say(flash, text, done ? "done" : "refused");
      if (done) form.reset(); // e.g. untick "Stop the print for good" once it stopped
    }, function () {
      say(flash, "The gateway could not be reached, so this may not have been done. Look at the printer's state before trying again.", "refused");
    }).then(function () {
      form.removeAttribute("data-busy");
      if (button) button.disabled = false;
      // A confirmation opened for this action (Cancel…) has been answered: close it, so the
      // updates it held back are applied.
      var confirmation = form.closest("details[open]");
      if (confirmation) confirmation.open = false;
      flushPending();
    });
  });

  // The answer of a post without this script rides in the address (?notice=…): drop it from
  // the address so that reloading the page does not show it again.
  if (window.history && history.replaceState && /[?&]notice=/.test(location.search)) {
    history.replaceState(null, "", location.pathname + location.hash);
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
        if (xhr.status < 400) {
          label.textContent = "100 % uploaded — checking the file…";
          location.href = xhr.responseURL || "/";
          return;
        }
        // Refused: show the refusal on this form and take the server's printer choice, so
        // the chosen file stays chosen for the next try.
        bar.hidden = true;
        label.textContent = "";
        var answer = new DOMParser().parseFromString(xhr.responseText, "text/html");
        var refusal = answer.getElementById("upload-refusal");
        var old = document.getElementById("upload-refusal");
        if (old) { old.remove(); }
        if (refusal) {
          var again = refusal.querySelector("#file-again");
          if (again) { again.textContent = "Nothing was stored. Check the choices below and send it again."; }
          refusal = document.importNode(refusal, true);
          var choice = answer.querySelector("select[name=printer] option[selected]");
          var select = form.querySelector("select[name=printer]");
          if (choice && select) { select.value = choice.value; }
        } else {
          refusal = document.createElement("div");
          refusal.className = "notice refused";
          refusal.id = "upload-refusal";
          var p = document.createElement("p");
          p.setAttribute("role", "alert");
          p.id = "upload-error";
          p.textContent = "Not queued: the gateway answered " + xhr.status + " " + xhr.statusText + ". Nothing was stored.";
          refusal.appendChild(p);
        }
        form.insertBefore(refusal, form.firstElementChild.nextSibling);
        refusal.setAttribute("tabindex", "-1");
        refusal.focus();
      };
      xhr.onerror = function () {
        label.textContent = "The upload was interrupted (network). Nothing was queued; try again.";
      };
      xhr.send(new FormData(form));
    });
  }
})();

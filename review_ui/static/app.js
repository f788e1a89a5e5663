// hitl-proxy review UI: live queue, countdowns, decisions and grant revocations through the JSON API.
// Request content is attacker-controlled: this file only ever writes data with textContent
// and attributes, never innerHTML. Every state-changing call carries X-CSRF-Token.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.getAttribute("content") : "";
  const page = document.body.dataset.page;

  // Status labels and badge tones: the server's tables (review_ui/present.py), in the page.
  const LABELS = JSON.parse(document.body.dataset.statusLabels || "{}");
  const TONES = JSON.parse(document.body.dataset.statusTones || "{}");

  // -- times ------------------------------------------------------------------------------
  function duration(seconds) {
    const s = Math.floor(Math.abs(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-age]").forEach(function (el) {
      const t = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(t)) el.textContent = duration((now - t) / 1000) + " ago";
    });
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      const t = Date.parse(el.dataset.deadline);
      if (isNaN(t)) return;
      const left = (t - now) / 1000;
      el.textContent = left <= 0 ? "due now" : duration(left) + " left";
      el.classList.toggle("soon", left > 0 && left < 300);
      el.classList.toggle("overdue", left <= 0);
    });
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      const t = Date.parse(el.dataset.expires);
      if (isNaN(t)) return;
      const left = (t - now) / 1000;
      el.textContent = left <= 0 ? "expired" : "expires in " + duration(left);
      el.classList.toggle("soon", left > 0 && left < 300);
    });
  }
  tick();
  setInterval(tick, 1000);

  // Local-time tooltips on server-rendered UTC times.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    const t = Date.parse(el.getAttribute("datetime"));
    if (!isNaN(t)) el.title = new Date(t).toLocaleString();
  });

  // -- "Show all" on long bodies ------------------------------------------------------------
  document.querySelectorAll("[data-show-all]").forEach(function (btn) {
    const label = btn.textContent;
    btn.addEventListener("click", function () {
      const box = btn.closest(".bodybox");
      const open = btn.getAttribute("aria-expanded") === "true";
      box.querySelector('[data-body="full"]').hidden = open;
      box.querySelector('[data-body="preview"]').hidden = !open;
      btn.setAttribute("aria-expanded", String(!open));
      btn.textContent = open ? label : "Show less";
    });
  });

  // -- live events --------------------------------------------------------------------------
  function listen(onEvent, onOpen, types) {
    if (!window.EventSource) return;
    const live = document.getElementById("live");
    const es = new EventSource("/api/events");
    es.onopen = function () {
      if (live) live.dataset.state = "on";
      // Changes made while the stream was down (a reload, a network blip) sent no event.
      if (onOpen) onOpen();
    };
    es.onerror = function () { if (live) live.dataset.state = "off"; };
    (types || ["held", "changed"]).forEach(function (type) {
      es.addEventListener(type, function (e) {
        try { onEvent(JSON.parse(e.data)); } catch (err) { /* a malformed event: ignore it */ }
      });
    });
  }

  // -- the queue ----------------------------------------------------------------------------
  function setTitleCount(n) {
    document.title = (n ? "(" + n + ") " : "") + "Queue · hitl-proxy";
    const nav = document.getElementById("nav-count");
    if (nav) nav.textContent = String(n);
  }

  function fillRow(tpl, item, known) {
    const li = tpl.content.firstElementChild.cloneNode(true);
    const set = function (name, text) {
      const el = li.querySelector('[data-f="' + name + '"]');
      if (el) el.textContent = text;
      return el;
    };
    li.dataset.id = item.id;
    if (!known.has(item.id)) li.classList.add("new");
    li.querySelector(".row-link").setAttribute("href", "/requests/" + encodeURIComponent(item.id));
    set("message", item.message || "(no message)");
    set("method", item.method);
    set("host", item.host);
    set("path", item.path);
    const tool = set("tool", item.mcp && item.mcp.tools.length ? "calls " + item.mcp.tools.join(", ") : "");
    if (tool) tool.hidden = !tool.textContent;
    set("agent", item.agent);
    set("approvals", item.approvals + "/" + item.approvals_needed + " approvals");
    const badge = set("status", LABELS[item.status] || item.status);
    badge.className = "badge tone-" + (TONES[item.status] || "muted");
    li.querySelector('[data-f="age"]').setAttribute("datetime", item.created_at);
    li.querySelector('[data-f="left"]').dataset.deadline = item.deadline || "";
    return li;
  }

  // A page drawn from a JSON view: fetched again on live events (a burst of events costs
  // one fetch), one fetch at a time, and every 30 s as a safety net should an event be missed.
  function liveView(url, loginNext, render) {
    let timer = null;
    let busy = false;
    async function refresh() {
      if (busy) { schedule(); return; }
      busy = true;
      try {
        const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (r.status === 401) { window.location.assign("/login?next=" + loginNext); return; }
        if (!r.ok) return;
        render(await r.json());
        tick();
      } catch (err) {
        /* the network blinked: the next event or the periodic refresh retries */
      } finally {
        busy = false;
      }
    }
    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 150);
    }
    setInterval(refresh, 30000);
    return { refresh: refresh, schedule: schedule };
  }

  function startQueue() {
    const list = document.getElementById("queue");
    const tpl = document.getElementById("row-template");
    const empty = document.getElementById("empty");
    const shown = document.getElementById("shown-count");
    const view = liveView("/queue.json" + window.location.search, "/", function (data) {
      const known = new Set(Array.from(list.children).map(function (li) { return li.dataset.id; }));
      list.replaceChildren.apply(list, data.items.map(function (item) { return fillRow(tpl, item, known); }));
      empty.hidden = data.items.length > 0;
      shown.textContent = String(data.items.length);
      setTitleCount(data.pending);
    });
    listen(view.schedule);
  }

  // -- a request's detail -------------------------------------------------------------------
  async function send(method, url, payload) {
    const r = await fetch(url, {
      method: method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    let data = {};
    try { data = await r.json(); } catch (err) { /* not JSON: use the status */ }
    if (!r.ok) {
      const e = new Error(data.message || "The server answered " + r.status + ".");
      e.status = r.status;
      throw e;
    }
    return data;
  }
  function post(url, payload) { return send("POST", url, payload); }

  function parseHeaders(text) {
    const out = {};
    const lines = text.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line) continue;
      const at = line.indexOf(":");
      if (at < 1) throw new Error("Header line " + (i + 1) + " is not “name: value”.");
      const name = line.slice(0, at).trim().toLowerCase();
      if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) throw new Error("“" + name + "” is not a valid header name.");
      out[name] = line.slice(at + 1).trim();
    }
    return out;
  }

  function startDetail() {
    const article = document.querySelector("article.detail");
    const id = article.dataset.id;
    const base = "/api/requests/" + encodeURIComponent(id) + "/";
    const errorBox = document.getElementById("action-error");
    const comment = document.getElementById("comment");
    const grant = document.getElementById("grant");
    const editBox = document.getElementById("edit-box");
    const editBody = document.getElementById("edit-body");
    const editHeaders = document.getElementById("edit-headers");
    const editArguments = document.getElementById("edit-arguments");  // an MCP tool call's
    let acting = false;

    function fail(message) {
      errorBox.textContent = message;
      errorBox.hidden = false;
      errorBox.scrollIntoView({ block: "nearest" });
    }

    function buildApproval() {
      // The digest of the content this page shows: if an edit changed it meanwhile, the
      // server answers 409 rather than count this approval for bytes not seen here.
      const payload = { comment: comment.value };
      if (article.dataset.digest) payload.digest = article.dataset.digest;
      if (grant && grant.value) {
        const minutes = Number(grant.value);
        if (!Number.isInteger(minutes) || minutes < 1 || minutes > 10080)
          throw new Error("Grant minutes must be a whole number from 1 to 10080.");
        payload.grant_minutes = minutes;
      }
      return payload;
    }

    function buildEdit() {
      const edit = {};
      if (editArguments && editArguments.value !== editArguments.defaultValue) {
        try { edit.arguments = JSON.parse(editArguments.value); } catch (err) {
          throw new Error("The edited arguments are not valid JSON, so nothing was sent: " + err.message);
        }
        if (editBody.value !== editBody.defaultValue)
          throw new Error("Edit either the arguments or the body, not both.");
      } else if (editBody.value !== editBody.defaultValue) {
        if (document.getElementById("edit").dataset.json === "true") {
          try { JSON.parse(editBody.value); } catch (err) {
            throw new Error("The edited body is not valid JSON, so nothing was sent: " + err.message);
          }
        }
        edit.body = editBody.value;
      }
      const before = parseHeaders(editHeaders.defaultValue);
      const after = parseHeaders(editHeaders.value);
      const headers = {};
      Object.keys(before).forEach(function (k) { if (!(k in after)) headers[k] = null; });
      Object.keys(after).forEach(function (k) { if (before[k] !== after[k]) headers[k] = after[k]; });
      if (Object.keys(headers).length) edit.headers = headers;
      if (!Object.keys(edit).length) throw new Error("Nothing was edited. Use Approve to approve as sent.");
      return edit;
    }

    async function act(kind) {
      if (acting) return;
      errorBox.hidden = true;
      let url, payload;
      try {
        if (kind === "approve") {
          url = base + "approve"; payload = buildApproval();
        } else if (kind === "approve-grant") {  // the grant offer: its minutes, its scope
          url = base + "approve"; payload = { comment: comment.value,
            grant_minutes: Number(document.getElementById("grant-offer").dataset.minutes) };
        } else if (kind === "edit-approve") {
          url = base + "approve"; payload = buildApproval(); payload.edit = buildEdit();
        } else if (kind === "reject") {
          if (!comment.value.trim()) {
            comment.focus();
            throw new Error("Write a comment to reject: it is the feedback the agent receives.");
          }
          url = base + "reject"; payload = { comment: comment.value };
          if (article.dataset.digest) payload.digest = article.dataset.digest;
        } else {
          if (!comment.value.trim()) { comment.focus(); throw new Error("Write a comment first."); }
          url = base + "comment"; payload = { comment: comment.value };
        }
      } catch (err) {
        fail(err.message);
        return;
      }
      acting = true;
      document.querySelectorAll("[data-act]").forEach(function (b) { b.disabled = true; });
      try {
        await post(url, payload);
        window.location.reload();
      } catch (err) {
        fail(err.message);
        document.querySelectorAll("[data-act]").forEach(function (b) { b.disabled = false; });
        acting = false;
      }
    }

    document.querySelectorAll("[data-act]").forEach(function (btn) {
      btn.addEventListener("click", function () { act(btn.dataset.act); });
    });

    const changed = document.getElementById("changed");
    document.getElementById("reload").addEventListener("click", function () { window.location.reload(); });
    function changedElsewhere() {
      const untouched = (!comment || !comment.value) && (!editBox || !editBox.open);
      if (untouched) window.location.reload();
      else changed.hidden = false; // keep what the reviewer is typing; offer a reload
    }
    listen(function (event) {
      if (event.id !== id || acting) return;
      changedElsewhere();
    }, async function () {
      try {
        const r = await fetch("/api/requests/" + encodeURIComponent(id),
                              { headers: { "Accept": "application/json" } });
        if (!r.ok) return;
        const rec = await r.json();
        // An edit keeps the status but changes the digest: the bytes shown here are stale.
        const stale = rec.status !== article.dataset.status ||
          (rec.digest || "") !== (article.dataset.digest || "");
        if (stale && !acting) changedElsewhere();
      } catch (err) { /* offline: the next event or reconnect will tell */ }
    });
  }

  // -- standing grants ----------------------------------------------------------------------
  function fillGrant(tpl, g) {
    const li = tpl.content.firstElementChild.cloneNode(true);
    const set = function (name, text) {
      const el = li.querySelector('[data-f="' + name + '"]');
      if (el) el.textContent = text;
      return el;
    };
    li.dataset.id = g.id;
    set("method", g.method);
    set("host", g.host);
    set("path", g.path);
    set("agent", g.agent);
    set("created_by", g.created_by);
    if (g.request_id) {
      const a = li.querySelector('[data-f="request"]');
      a.setAttribute("href", "/requests/" + encodeURIComponent(g.request_id));
      a.querySelector("code").textContent = g.request_id;
    } else {
      li.querySelector('[data-f="from"]').hidden = true;
    }
    const expires = li.querySelector('[data-f="expires"]');
    if (expires) expires.dataset.expires = g.expires_at;
    if (g.ended_at) {
      const revoked = g.revoked_at && g.revoked_at <= g.expires_at;
      set("ended", revoked ? "revoked by " + g.revoked_by : "expired");
      li.querySelector('[data-f="ended_at"]').setAttribute("datetime", g.ended_at);
    }
    return li;
  }

  function startGrants() {
    const active = document.getElementById("grants-active");
    const ended = document.getElementById("grants-ended");
    const activeTpl = document.getElementById("grant-active-template");
    const endedTpl = document.getElementById("grant-ended-template");
    const errorBox = document.getElementById("grants-error");
    let expiryTimer = null;

    // A grant's expiry sends no event: refresh just after the soonest one passes.
    function watchExpiry(items) {
      clearTimeout(expiryTimer);
      const soonest = Math.min.apply(null, items.map(function (g) { return Date.parse(g.expires_at); }));
      if (isFinite(soonest)) expiryTimer = setTimeout(view.refresh, Math.max(1000, soonest - Date.now() + 1000));
    }

    const view = liveView("/grants.json", "/grants", function (data) {
      active.replaceChildren.apply(active, data.active.map(function (g) { return fillGrant(activeTpl, g); }));
      ended.replaceChildren.apply(ended, data.ended.map(function (g) { return fillGrant(endedTpl, g); }));
      document.getElementById("active-count").textContent = String(data.active.length);
      document.getElementById("active-empty").hidden = data.active.length > 0;
      document.getElementById("ended-empty").hidden = data.ended.length > 0;
      const nav = document.getElementById("nav-count");
      if (nav) nav.textContent = String(data.pending);
      document.title = (data.pending ? "(" + data.pending + ") " : "") + "Grants · hitl-proxy";
      watchExpiry(data.active);
    });

    active.addEventListener("click", async function (e) {
      const btn = e.target.closest("[data-revoke]");
      if (!btn) return;
      const id = btn.closest("li").dataset.id;
      errorBox.hidden = true;
      btn.disabled = true;
      try {
        await send("DELETE", "/api/grants/" + encodeURIComponent(id));
      } catch (err) {
        // 404: someone revoked it first, or it expired; the refresh shows that.
        if (err.status !== 404) {
          errorBox.textContent = "The grant was not revoked: " + err.message;
          errorBox.hidden = false;
          btn.disabled = false;
          return;
        }
      }
      view.refresh();
    });

    watchExpiry(Array.from(active.querySelectorAll("[data-expires]")).map(function (el) {
      return { expires_at: el.dataset.expires };
    }));
    listen(view.schedule, view.schedule, ["grant_created", "grant_revoked", "held", "changed"]);
  }

  if (page === "queue") startQueue();
  if (page === "grants") startGrants();
  if (page === "detail") startDetail();
})();

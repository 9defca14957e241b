// pgwarden's status page: polls /ui/state and /ui/events on this server.
// Every value is written with textContent: nothing from the cluster is
// ever parsed as HTML.
"use strict";

const POLL_MS = 1000;
let lastEvent = 0;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function bytes(n) {
  if (typeof n !== "number") return n === undefined ? "" : String(n);
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function tags(member) {
  return Object.entries(member.tags || {}).map(([k, v]) => k + "=" + v).join(", ");
}

function row(cells, id) {
  const tr = document.createElement("tr");
  if (id) tr.dataset.member = id;
  for (const [text, cls] of cells) tr.appendChild(el("td", text, cls));
  return tr;
}

function showState(state) {
  const cluster = state.cluster || {};
  const members = cluster.members || [];
  document.getElementById("scope").textContent = cluster.scope || "";
  document.getElementById("paused").hidden = !cluster.pause;
  const leader = members.find((m) => m.role === "leader" || m.role === "standby_leader");
  document.getElementById("leader").textContent = leader ? leader.name : "none";
  document.getElementById("timeline").textContent = leader && leader.timeline !== undefined ? leader.timeline : "—";

  const lease = state.lease;
  const leaseText = document.getElementById("lease");
  const bar = document.getElementById("lease-bar");
  if (lease && typeof lease.ttl_left === "number" && lease.granted_ttl > 0) {
    leaseText.textContent = lease.ttl_left + " s of " + lease.granted_ttl + " s";
    bar.style.width = Math.max(0, Math.min(100, (100 * lease.ttl_left) / lease.granted_ttl)) + "%";
  } else {
    leaseText.textContent = lease && lease.error ? "unknown" : "no leader";
    bar.style.width = "0";
  }

  const body = document.getElementById("members");
  body.replaceChildren(...members.map((m) => row([
    [m.name],
    [m.host + ":" + m.port],
    [m.role, "role-" + m.role],
    [m.state, "state-" + m.state],
    [m.timeline === undefined ? "" : m.timeline],
    [m.role === "leader" ? "" : bytes(m.lag)],
    [tags(m)],
    [m.pending_restart ? "yes" : ""],
  ], m.name)));

  const history = (state.history || []).slice().reverse();
  document.getElementById("history").replaceChildren(...history.map((h) => row([
    [h[0]], [h[1]], [h[2]], [h[3] || ""], [h[4] || ""],
  ])));
}

function showEvents(answer) {
  const list = document.getElementById("events");
  for (const e of answer.events || []) {
    const item = el("li");
    item.dataset.kind = e.kind;
    item.appendChild(el("time", new Date(e.at_unix_ms).toLocaleTimeString()));
    item.appendChild(el("span", e.kind, "kind"));
    item.appendChild(el("span", e.message));
    list.prepend(item);
    lastEvent = Math.max(lastEvent, e.seq);
  }
  while (list.children.length > 200) list.lastChild.remove();
  document.getElementById("events-status").textContent =
    answer.following ? "(live from the controller)" : "(the controller's stream is not connected)";
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const response = await fetch("/ui/state", { cache: "no-store" });
    if (!response.ok) throw new Error((await response.text()).trim() || "/ui/state answered " + response.status);
    showState(await response.json());
    problem.hidden = true;
    document.getElementById("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    problem.textContent = "Cannot read the cluster: " + error.message;
    problem.hidden = false;
  }
  try {
    const response = await fetch("/ui/events?after=" + lastEvent, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) {
      document.getElementById("events-status").textContent = "(needs the REST API's credentials)";
    } else if (response.ok) {
      showEvents(await response.json());
    }
  } catch (error) {
    document.getElementById("events-status").textContent = "(" + error.message + ")";
  }
  setTimeout(poll, POLL_MS);
}

poll();

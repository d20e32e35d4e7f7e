// The certmq console: a client of the public admin API (see sign.js). No
// framework, no build step, no inline script (the page's CSP forbids it),
// and nothing from the network but this broker. Untrusted text reaches the
// page only through textContent.

import { call } from "./sign.js";

const KEY = "certmq.console.key"; // sessionStorage: this tab only
const main = document.getElementById("main");
const errorBox = document.getElementById("error");
const noticeBox = document.getElementById("notice");
// The page shown; a page's refresh stops once another is shown.
let generation = 0;

// ---- small DOM helpers -------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else if (value !== false && value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function field(label, input) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return el("div", {}, el("label", { for: id, text: label }), input);
}

function showError(answer) {
  const b = answer.body || {};
  errorBox.textContent =
    `${b.Code || "Error"}: ${b.Message || "the call failed"}` +
    (b.RequestId ? `\nRequestId: ${b.RequestId}` : "");
  errorBox.hidden = false;
}

function showNotice(text) {
  noticeBox.textContent = text;
  noticeBox.hidden = false;
}

function clearMessages() {
  errorBox.hidden = true;
  noticeBox.hidden = true;
}

function when(ms) {
  const n = Number(ms);
  return n ? new Date(n).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
}

function statusText(code) {
  return code === "1" ? "Active" : code === "0" ? "Inactive" : String(code);
}

function statusCell(code) {
  return el("td", {
    class: code === "1" ? "status-active" : "status-inactive",
    "data-status": statusText(code),
    text: statusText(code),
  });
}

// Runs `load` every `ms` while page `mine` (the generation it started
// in) is shown.
function repeat(load, ms, mine) {
  if (mine !== generation) return;
  const timer = setInterval(() => {
    if (mine === generation) load();
    else clearInterval(timer);
  }, ms);
}

// Asks before a destructive action; resolves true on Confirm.
function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// ---- the session key and the API --------------------------------------

function key() {
  const raw = sessionStorage.getItem(KEY);
  return raw ? JSON.parse(raw) : null;
}

// Calls the API; on an error shows Code, Message and RequestId and
// resolves to null.
async function api(action, params = {}) {
  const k = key();
  if (!k) {
    route();
    return null;
  }
  const instanceParam =
    ["CloseConnection", "QuerySessionByClientId", "BatchQuerySessionByClientIds"].includes(action)
      ? "InstanceId"
      : "MqttInstanceId";
  let answer;
  try {
    answer = await call(k, action, { [instanceParam]: k.instance, ...params });
  } catch (e) {
    answer = { status: 0, body: { Code: "NetworkError", Message: String(e) } };
  }
  if (answer.status !== 200) {
    showError(answer);
    return null;
  }
  return answer.body;
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.hash = "#/sign-in";
  route();
}

// ---- pages ---------------------------------------------------------------

async function signIn() {
  document.getElementById("nav").hidden = true;
  let instance = "";
  try {
    instance = (await (await fetch("instance.json", { cache: "no-store" })).json()).instance_id;
  } catch {
    // typed by hand, then
  }
  const id = el("input", { id: "key-id", autocomplete: "off", required: true, spellcheck: "false" });
  const secret = el("input", { id: "key-secret", type: "password", autocomplete: "off", required: true });
  const inst = el("input", { id: "instance", value: instance, required: true, spellcheck: "false" });
  const form = el(
    "form",
    { class: "panel", "aria-labelledby": "sign-in-title" },
    el("h2", { id: "sign-in-title", text: "Sign in with an access key" }),
    el("p", {
      text:
        "The secret stays in this tab (sessionStorage) and signs each call here (ACS3-HMAC-SHA256); it is never sent. It is forgotten on sign-out and when the tab closes.",
    }),
    field("Access key ID", id),
    field("Access key secret", secret),
    field("Instance ID", inst),
    el("p", {}, el("button", { type: "submit", class: "primary", text: "Sign in" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const candidate = { id: id.value.trim(), secret: secret.value, instance: inst.value.trim() };
    let answer;
    try {
      answer = await call(candidate, "ListCaCertificate", {
        MqttInstanceId: candidate.instance,
        PageNo: "1",
        PageSize: "1",
      });
    } catch (e) {
      answer = { status: 0, body: { Code: "NetworkError", Message: String(e) } };
    }
    if (answer.status !== 200) {
      showError(answer);
      return;
    }
    sessionStorage.setItem(KEY, JSON.stringify(candidate));
    // The page asked for (or the overview); the same hash fires no
    // hashchange, so show it here then.
    const wanted = location.hash && location.hash !== "#/sign-in" ? location.hash : "#/overview";
    if (location.hash === wanted) route();
    else location.hash = wanted;
  });
  main.replaceChildren(form);
  id.focus();
}

// Prometheus text: the sum of every sample of `name` (any labels).
function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
    }
  }
  return sum;
}

async function overview() {
  const mine = generation;
  const k = key();
  const card = (label, id) =>
    el("div", { class: "card" }, el("div", { class: "value", id, text: "…" }), el("div", { class: "label", text: label }));
  main.replaceChildren(
    el("h2", { text: "Overview" }),
    el("p", {}, "Instance ", el("span", { class: "mono", id: "ov-instance", text: k.instance })),
    el(
      "div",
      { class: "cards" },
      card("CA certificates", "ov-cas"),
      card("Device certificates", "ov-devices"),
      card("Live sessions", "ov-sessions"),
      card("Connects per second", "ov-connects"),
      card("Refusals per second", "ov-refusals"),
    ),
  );
  let last = null;
  const tick = async () => {
    let text;
    try {
      text = await (await fetch("/metrics", { cache: "no-store" })).text();
    } catch {
      return;
    }
    const now = performance.now();
    const sample = {
      connects: metricSum(text, "certmq_connects_accepted_total"),
      refusals: metricSum(text, "certmq_handshakes_refused_total") + metricSum(text, "certmq_refused_after_handshake_total"),
    };
    const set = (id, value) => {
      const node = document.getElementById(id);
      if (node) node.textContent = value;
    };
    set("ov-cas", metricSum(text, "certmq_registry_cas"));
    set("ov-devices", metricSum(text, "certmq_registry_devices"));
    set("ov-sessions", metricSum(text, "certmq_sessions_live"));
    if (last) {
      const secs = (now - last.at) / 1000;
      set("ov-connects", ((sample.connects - last.connects) / secs).toFixed(1));
      set("ov-refusals", ((sample.refusals - last.refusals) / secs).toFixed(1));
    }
    last = { ...sample, at: now };
  };
  await tick();
  repeat(tick, 2000, mine);
}

async function cas() {
  const mine = generation;
  const table = el("table", { id: "ca-table", "aria-label": "CA certificates" });
  const details = el("section", { class: "panel", id: "ca-details", hidden: true });
  main.replaceChildren(el("h2", { text: "CA certificates" }), registerForm(), table, details);
  const load = async () => {
    const answer = await api("ListCaCertificate", { PageNo: "1", PageSize: "100" });
    if (!answer) return;
    const rows = answer.Data.CaCertificateVOS.map((ca) => {
      const active = ca.Status === "1";
      const act = (label, action, cls, ask) =>
        el("button", {
          type: "button",
          class: cls,
          text: label,
          "aria-label": `${label} CA ${ca.CaName}`,
          onclick: async () => {
            clearMessages();
            if (ask && !(await confirmAction(await ask()))) return;
            if (await api(action, { Sn: ca.Sn })) {
              showNotice(`${action}: ${ca.CaName} (${ca.Sn})`);
              details.hidden = true;
            }
            await load();
          },
        });
      const impact = async (what) => {
        const info = await api("GetCaCertificate", { Sn: ca.Sn });
        const devices = await api("ListDeviceCertificateByCaSn", { CaSn: ca.Sn, PageNo: "1", PageSize: "1" });
        const sessions = info ? info.Data.LiveSessions : "?";
        const count = devices ? devices.Data.Total : "?";
        return `${what} the CA "${ca.CaName}" (${ca.Sn})? It affects ${count} device certificate(s) and ${sessions} live session(s), which are closed at once.`;
      };
      return el(
        "tr",
        { "data-sn": ca.Sn },
        el("td", { text: ca.CaName }),
        el("td", { class: "mono", text: ca.Sn }),
        statusCell(ca.Status),
        el("td", { text: when(ca.ValidEnd) }),
        el(
          "td",
          {},
          el("button", {
            type: "button",
            text: "Details",
            "aria-label": `Details of CA ${ca.CaName}`,
            onclick: () => showCa(ca.Sn, details),
          }),
          " ",
          active
            ? act("Inactivate", "InactivateCaCertificate", "danger", () => impact("Inactivate"))
            : act("Activate", "ActiveCaCertificate", "", null),
          " ",
          act("Delete", "DeleteCaCertificate", "danger", () => impact("Delete")),
        ),
      );
    });
    table.replaceChildren(
      el("thead", {}, el("tr", {}, ...["Name", "Serial", "Status", "Valid until", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows),
    );
  };
  await load();
  repeat(load, 3000, mine);
}

async function showCa(sn, panel) {
  const answer = await api("GetCaCertificate", { Sn: sn });
  if (!answer) return;
  const d = answer.Data;
  panel.replaceChildren(
    el("h3", { text: `CA ${d.CaName}` }),
    el("p", { class: "mono", text: `Serial ${d.Sn} · ${statusText(d.Status)} · ${when(d.ValidBegin)} – ${when(d.ValidEnd)}` }),
    el("p", { text: `Registration code ${d.RegistrationCode} · live sessions ${d.LiveSessions}` }),
    el("pre", { text: d.CaContent }),
  );
  panel.hidden = false;
}

function registerForm() {
  const name = el("input", { id: "reg-name", required: true });
  const caFile = el("input", { id: "reg-ca", type: "file", accept: ".pem", required: true });
  const verFile = el("input", { id: "reg-verification", type: "file", accept: ".pem", required: true });
  const code = el("span", { class: "code", id: "reg-code", text: "…" });
  const form = el(
    "form",
    { class: "panel", id: "register", "aria-labelledby": "register-title" },
    el("h3", { id: "register-title", text: "Register a CA certificate" }),
    el("p", {}, "Registration code: ", code, " — the CN of the verification certificate, signed by the CA's key."),
    el("div", { class: "row" }, field("CA name", name), field("CA certificate (PEM)", caFile), field("Verification certificate (PEM)", verFile)),
    el("p", {}, el("button", { type: "submit", class: "primary", text: "Register" })),
  );
  api("GetRegisterCode").then((answer) => {
    if (answer) code.textContent = answer.RegisterCode;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    if (!caFile.files[0] || !verFile.files[0]) return;
    const answer = await api("RegisterCaCertificate", {
      CaName: name.value.trim(),
      CaContent: await caFile.files[0].text(),
      VerificationContent: await verFile.files[0].text(),
    });
    if (answer) {
      showNotice(`Registered: ${name.value.trim()} (${answer.Sn})`);
      form.reset();
    }
  });
  return form;
}

async function devices(params) {
  const mine = generation;
  const caSelect = el("select", { id: "dev-ca" });
  const search = el("input", { id: "dev-search", type: "search", placeholder: "serial or name" });
  const table = el("table", { id: "device-table", "aria-label": "Device certificates" });
  const pageInfo = el("span", { id: "dev-page" });
  let page = 1;
  let keyword = ""; // as last submitted: the refresh does not take what is being typed
  const size = 20;
  const prev = el("button", { type: "button", text: "Previous page", onclick: () => { page -= 1; load(); } });
  const next = el("button", { type: "button", text: "Next page", onclick: () => { page += 1; load(); } });
  const form = el(
    "form",
    { class: "panel row", role: "search" },
    field("CA", caSelect),
    field("Search", search),
    el("button", { type: "submit", text: "Search" }),
  );
  main.replaceChildren(el("h2", { text: "Device certificates" }), form, table, el("div", { class: "pager" }, prev, pageInfo, next));
  const cas = await api("ListCaCertificate", { PageNo: "1", PageSize: "100" });
  if (!cas) return;
  caSelect.replaceChildren(
    ...cas.Data.CaCertificateVOS.map((ca) => el("option", { value: ca.Sn, text: `${ca.CaName} (${ca.Sn})` })),
  );
  if (params.get("ca")) caSelect.value = params.get("ca");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    page = 1;
    keyword = search.value.trim();
    load();
  });
  caSelect.addEventListener("change", () => {
    page = 1;
    load();
  });
  async function load() {
    if (!caSelect.value) {
      table.replaceChildren(el("caption", { text: "No CA registered yet." }));
      return;
    }
    const query = { CaSn: caSelect.value, PageNo: String(page), PageSize: String(size) };
    if (keyword) query.Keyword = keyword;
    const answer = await api("ListDeviceCertificateByCaSn", query);
    if (!answer) return;
    const data = answer.Data;
    const pages = Math.max(1, Math.ceil(data.Total / size));
    pageInfo.textContent = `Page ${page} of ${pages} · ${data.Total} device(s)`;
    prev.disabled = page <= 1;
    next.disabled = page >= pages;
    const rows = data.DeviceCertificateVOS.map((d) => {
      const ids = { CaSn: d.CaSn, DeviceSn: d.DeviceSn };
      const act = (label, action, cls, question) =>
        el("button", {
          type: "button",
          class: cls,
          text: label,
          "aria-label": `${label} ${d.DeviceName || d.DeviceSn}`,
          onclick: async () => {
            clearMessages();
            if (question && !(await confirmAction(question))) return;
            if (await api(action, ids)) showNotice(`${action}: ${d.DeviceName} (${d.DeviceSn})`);
            await load();
          },
        });
      const live = Number(d.LiveSessions) || 0;
      return el(
        "tr",
        { "data-sn": d.DeviceSn, "data-name": d.DeviceName },
        el("td", { text: d.DeviceName || "(blocked serial)" }),
        el("td", { class: "mono", text: d.DeviceSn }),
        statusCell(d.Status),
        el("td", { "data-live": String(live), text: live ? `online (${live})` : "offline" }),
        el("td", { text: when(d.ValidEnd) }),
        el(
          "td",
          {},
          d.Status === "1"
            ? act("Inactivate", "InactivateDeviceCertificate", "danger",
                `Inactivate the device "${d.DeviceName}" (${d.DeviceSn})? Its ${live} live session(s) are closed at once and it is refused until activated.`)
            : act("Activate", "ActiveDeviceCertificate", "", null),
          " ",
          act("Delete", "DeleteDeviceCertificate", "danger",
            `Delete the device record "${d.DeviceName}" (${d.DeviceSn})? Its ${live} live session(s) are closed; it registers again on its next connection while its CA is active.`),
        ),
      );
    });
    table.replaceChildren(
      el("thead", {}, el("tr", {}, ...["Name", "Serial", "Status", "Live", "Valid until", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows),
    );
  }
  await load();
  repeat(load, 2000, mine);
}

async function sessions() {
  const input = el("input", { id: "session-client-id", required: true, spellcheck: "false" });
  const result = el("section", { class: "panel", id: "session-result", hidden: true });
  const form = el(
    "form",
    { class: "panel row", role: "search" },
    field("Client ID", input),
    el("button", { type: "submit", text: "Look up" }),
  );
  main.replaceChildren(el("h2", { text: "Sessions" }), form, result);
  const look = async () => {
    const clientId = input.value.trim();
    const answer = await api("QuerySessionByClientId", { ClientId: clientId });
    if (!answer) return;
    const online = answer.OnlineStatus === true;
    const kick = el("button", {
      type: "button",
      class: "danger",
      text: "Kick",
      "aria-label": `Kick ${clientId}`,
      onclick: async () => {
        clearMessages();
        if (!(await confirmAction(`Close the connection of client "${clientId}"? It may reconnect.`))) return;
        if (await api("CloseConnection", { ClientId: clientId })) showNotice(`CloseConnection: ${clientId}`);
        await look();
      },
    });
    result.replaceChildren(
      el("p", {}, "Client ", el("span", { class: "mono", text: clientId }), online ? " is online. " : " is offline.", online ? kick : null),
    );
    result.hidden = false;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessages();
    look();
  });
  input.focus();
}

// ---- routing ---------------------------------------------------------------

const pages = { overview, cas, devices, sessions };

function route() {
  generation += 1;
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  if (!key() || path === "sign-in") {
    signIn();
    return;
  }
  const name = pages[path] ? path : "overview";
  document.getElementById("nav").hidden = false;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  pages[name](new URLSearchParams(query || ""));
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", () => {
  clearMessages();
  route();
});
route();

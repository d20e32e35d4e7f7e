// ACS3-HMAC-SHA256, the signature of the Alibaba Cloud RPC API (V3), as
// the official SDKs compute it, with WebCrypto: the secret never leaves
// this tab. Every call goes to the admin API exactly as an SDK's would, so
// permissions, the owner check, rate limits and the audit trail apply.

const encoder = new TextEncoder();

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(text) {
  return hex(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

async function hmacHex(secret, text) {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return hex(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
}

// RFC 3986: A-Z a-z 0-9 - _ . ~ stay, everything else is %XX.
export function pct(value) {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

function nonce() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return hex(bytes);
}

// The form body of `params`, in their order.
export function formBody(params) {
  return Object.entries(params)
    .map(([k, v]) => `${pct(k)}=${pct(String(v))}`)
    .join("&");
}

// Calls `action` with `params` (a form body), signed with `key`
// ({id, secret}); resolves to {status, body} with the answer's JSON.
export async function call(key, action, params) {
  const body = formBody(params);
  // Host is not signed: a reverse proxy in front of the admin API may
  // rewrite it (nginx does by default). What is signed decides the call.
  const headers = {
    "content-type": "application/x-www-form-urlencoded",
    "x-acs-action": action,
    "x-acs-content-sha256": await sha256Hex(body),
    "x-acs-date": new Date().toISOString().replace(/\.\d{3}Z$/, "Z"),
    "x-acs-signature-nonce": nonce(),
    "x-acs-version": "2020-04-20",
  };
  const signed = Object.keys(headers).sort();
  const canonicalHeaders = signed.map((name) => `${name}:${headers[name].trim()}\n`).join("");
  const canonical = [
    "POST",
    "/",
    "",
    canonicalHeaders,
    signed.join(";"),
    headers["x-acs-content-sha256"],
  ].join("\n");
  const stringToSign = "ACS3-HMAC-SHA256\n" + (await sha256Hex(canonical));
  const signature = await hmacHex(key.secret, stringToSign);
  const sent = { ...headers };
  sent.authorization =
    `ACS3-HMAC-SHA256 Credential=${key.id},SignedHeaders=${signed.join(";")},Signature=${signature}`;
  const response = await fetch("/", {
    method: "POST",
    headers: sent,
    body,
    credentials: "omit",
    cache: "no-store",
  });
  let json;
  try {
    json = await response.json();
  } catch {
    json = { Code: "BadAnswer", Message: `the broker answered HTTP ${response.status} without JSON` };
  }
  return { status: response.status, body: json };
}

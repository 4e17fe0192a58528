// Credentials for the gateway, when it asks for them. GET /v1/auth says whether it does: "open"
// (also when the endpoint is missing, 404) sends nothing and never prompts; "required" (also a
// 401 from /v1/auth itself) asks the person for an API key once, exchanges it at POST /v1/tokens
// for a short-lived token, and renews the token before it expires. HTTP calls carry
// "Authorization: Bearer <token>"; WebSockets, which cannot carry headers, ?access_token=<token>.
//
// The API key and the token live in this module's variables only, never in sessionStorage or
// localStorage: the key is a long-lived secret of the tenant, and storage would leave it readable
// by any script of this origin and in the browser's saved session. The cost is that a reload of
// the page asks for the key again.

const AUTH_PATH = "/v1/auth";
const TOKENS_PATH = "/v1/tokens";
// A token is renewed this long before it expires, but not before 80 % of its life (a short-lived
// one, under five minutes, is renewed at 80 %).
const RENEW_BEFORE_MS = 60_000;
// A token with less left than this is not used: a request could outlive it.
const USABLE_FOR_MS = 5_000;

// A problem with credentials, in words for the person at the page.
export class AuthError extends Error {}

let modePromise = null; // the detected mode, "open" or "required", once known
let mode = null; // the same, for code that cannot wait (a click handler)
let apiKey = null;
let token = null; // {token, expiresAt, tenant, scopes}
let tokenPromise = null; // one exchange (or prompt) at a time, shared by every caller
let renewTimer = null;
let declined = false; // the person cancelled the dialog: no more prompts until they sign in
const listeners = new Set();

// The gateway's mode; detected once, again after a 401 that says it has changed.
export function authMode() {
  modePromise ??= detectMode().then(
    (detected) => {
      mode = detected;
      return detected;
    },
    () => {
      modePromise = null; // unreachable now: open for this call, asked again on the next
      return "open";
    },
  );
  return modePromise;
}

// The mode as last detected, without waiting: null before the first request.
export const knownMode = () => mode;

async function detectMode() {
  const response = await fetch(AUTH_PATH, { headers: { Accept: "application/json" } });
  if (response.status === 401) return "required";
  if (response.status === 404) return "open"; // a gateway from before authentication
  if (!response.ok) throw new Error(`GET ${AUTH_PATH} answered ${response.status}`);
  const body = await response.json().catch(() => ({}));
  return body.mode === "required" ? "required" : "open";
}

// Calls listener({signedIn, tenant, scopes, expiresAt}) at each change of the token, in required mode only.
export function onAuthChange(listener) {
  listeners.add(listener);
}

function changed() {
  if (mode !== "required") return; // nothing to show while the gateway is open
  const state = token
    ? { signedIn: true, tenant: token.tenant, scopes: token.scopes, expiresAt: token.expiresAt }
    : { signedIn: false };
  for (const listener of listeners) listener(state);
}

// The token to send, or null in open mode; prompts for the API key when there is none yet.
export async function currentToken() {
  if ((await authMode()) === "open") return null;
  if (token && token.expiresAt - Date.now() > USABLE_FOR_MS) return token.token;
  // Background requests (lists refreshing) would otherwise open the dialog again and again.
  if (apiKey === null && declined) {
    throw new AuthError("This gateway requires an API key: press Sign in at the top of the page to give one.");
  }
  tokenPromise ??= obtainToken().finally(() => {
    tokenPromise = null;
  });
  return (await tokenPromise).token;
}

async function obtainToken() {
  let problem = null;
  for (;;) {
    if (apiKey === null) apiKey = await askForKey(problem); // AuthError if the person cancels
    try {
      return await exchange(apiKey);
    } catch (error) {
      if (!(error instanceof KeyRefused)) throw error;
      apiKey = null; // refused: ask again, saying why
      problem = error.message;
    }
  }
}

class KeyRefused extends AuthError {}

async function exchange(key) {
  let response;
  try {
    response = await fetch(TOKENS_PATH, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
    });
  } catch {
    throw new AuthError(`Could not reach the gateway to exchange the API key for a token (POST ${TOKENS_PATH}).`);
  }
  if (response.status === 401 || response.status === 403) {
    throw new KeyRefused(`The gateway refused this API key (${response.status}${await reason(response)}).`);
  }
  if (!response.ok) throw new AuthError(`The gateway could not issue a token (${response.status}${await reason(response)}).`);
  const issued = await response.json();
  if (typeof issued.token !== "string" || !Number.isFinite(issued.expiresAt)) {
    throw new AuthError(`POST ${TOKENS_PATH} answered without a token and its expiresAt.`);
  }
  token = issued;
  scheduleRenewal();
  changed();
  return token;
}

function scheduleRenewal() {
  clearTimeout(renewTimer);
  const left = token.expiresAt - Date.now();
  const at = Math.max(USABLE_FOR_MS, left - RENEW_BEFORE_MS, 0.8 * left);
  renewTimer = setTimeout(() => {
    if (apiKey === null) return;
    exchange(apiKey).catch((error) => {
      // The next request prompts (a refused key) or says why (the gateway gone).
      if (error instanceof KeyRefused) apiKey = null;
      token = null;
      changed();
    });
  }, at);
}

// Asks for the key now (the header's Sign in): resolves once a token is held, or rejects with an AuthError.
export async function signIn() {
  declined = false;
  await currentToken();
}

// Forgets the token: the next request exchanges the key again. With key: signs out, and
// nothing prompts until Sign in.
export function forget({ key = false } = {}) {
  clearTimeout(renewTimer);
  token = null;
  if (key) {
    apiKey = null;
    declined = true;
  }
  changed();
}

// fetch() with the token, if the gateway wants one. A 401 drops the token (or, in open mode,
// asks for the mode again: the gateway may have started requiring tokens) and tries once more.
export async function authFetch(url, init = {}) {
  const send = async () => {
    const bearer = await currentToken();
    const headers = new Headers(init.headers);
    if (bearer) headers.set("Authorization", `Bearer ${bearer}`);
    return fetch(url, { ...init, headers });
  };
  const response = await send();
  if (response.status !== 401) return response;
  const wasOpen = (await authMode()) === "open";
  if (wasOpen) modePromise = null;
  forget();
  if (wasOpen && (await authMode()) === "open") return response;
  return send();
}

// A WebSocket URL with ?access_token=<token>, if the gateway wants one.
export async function socketUrl(url) {
  const bearer = await currentToken();
  if (!bearer) return url;
  const withToken = new URL(url);
  withToken.searchParams.set("access_token", bearer);
  return withToken.toString();
}

// What to tell the person about a 401 or 403 (null for any other status).
export function credentialsProblem(status, detail) {
  if (status === 401) return `The gateway did not accept the credentials (401${detail}). Try again: it will ask for the API key if it needs it.`;
  if (status === 403) return `This API key is not allowed to do that (403${detail}).`;
  return null;
}

async function reason(response) {
  const body = await response
    .clone()
    .json()
    .catch(() => null);
  const detail = body?.detail ?? body;
  const message = typeof detail === "string" ? detail : (detail?.message ?? body?.message);
  return message ? `: ${message}` : "";
}

// The dialog in index.html (#auth-dialog): resolves with the key, or rejects if cancelled.
function askForKey(problem) {
  const dialog = document.getElementById("auth-dialog");
  const form = dialog.querySelector("form");
  const input = form.elements.api_key;
  const note = dialog.querySelector("[data-part=auth-problem]");
  note.textContent = problem ?? "";
  note.hidden = !problem;
  input.value = "";
  return new Promise((resolve, reject) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        input.value = "";
        if (dialog.returnValue === "use" && key) {
          resolve(key);
        } else {
          declined = true;
          changed();
          reject(new AuthError("This gateway requires an API key, and none was given: press Sign in at the top of the page."));
        }
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

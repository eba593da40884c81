// Talks to logistik's REST API with the session cookie; state changes carry the CSRF token.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

const session = { user: null, csrf: "", can_write: false, read_protected: false, oidc: false, known: false };

/** The current session as /auth/session last answered. */
export function currentSession() {
  return session;
}

async function parse(response) {
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (!response.ok) {
    let detail = body && typeof body === "object" && "detail" in body ? body.detail : body;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    if (!detail) detail = `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, String(detail));
  }
  return body;
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  // Reads that need the rights of a change (a topic's newest event) are checked like one.
  if (method !== "GET" || session.csrf) headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "cannot reach logistik");
  }
  return parse(response);
}

/** GET a JSON document. */
export function get(path) {
  return call("GET", path);
}

/** POST, PUT or DELETE with the CSRF header. */
export function send(method, path, body) {
  return call(method, path, body);
}

/** Ask who we are; an API without auth answers 404 and everyone may only read. */
export async function loadSession() {
  try {
    const answer = await get("/auth/session");
    Object.assign(session, {
      user: answer.user ?? null,
      csrf: answer.csrf ?? "",
      can_write: Boolean(answer.can_write),
      read_protected: Boolean(answer.read_protected),
      oidc: Boolean(answer.oidc),
      known: true,
    });
  } catch (error) {
    if (error.status === 0) throw error;
    Object.assign(session, { user: null, csrf: "", can_write: false, read_protected: false, oidc: false, known: false });
  }
  return session;
}

/** Log in with a user and password, or a token. */
export async function login(credentials) {
  await send("POST", "/auth/login", credentials);
  return loadSession();
}

/** End the session. */
export async function logout() {
  try {
    await send("POST", "/auth/logout");
  } finally {
    await loadSession();
  }
}

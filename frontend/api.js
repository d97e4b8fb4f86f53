// The only module that calls fetch and knows where the search service lives.

import { NO_ANSWER, fallbackMessage } from "./messages.js";

const CONFIG_URL = "config.json";
const REQUEST_TIMEOUT_MS = 30_000;
const DEFAULT_RETRIES = 3;
const DEFAULT_RETRY_BASE_MS = 1_000;
const DEFAULT_RETRY_MAX_MS = 10_000;

/**
 * An error from the search service (`status` > 0) or from the network (`status` 0).
 * `message` is meant for people: the server's own explanation where it gave one. `body` is the answer's JSON
 * body, if it had one (a 503 from /health still carries the service's limits).
 */
export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, retryAfterMs?: number|null, body?: object|null}} [details]
   */
  constructor(message, { status = 0, code = "network", retryAfterMs = null, body = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.body = body;
  }

  /**
   * True for answers worth retrying after a pause: the service is warming up (503; or API Gateway's 504
   * while a cold container is still loading a large index, and 502 when it was recycled) or overloaded (429).
   */
  get retryable() {
    return [429, 502, 503, 504].includes(this.status);
  }

  /** True when no answer arrived at all (offline, DNS, CORS refusal, timeout). */
  get isNetwork() {
    return this.status === 0;
  }
}

/**
 * Reads `config.json` beside the page: `apiBaseUrl` ("" = same origin), `defaultResizeSize` (the shorter side
 * uploads are shrunk to until /health names the model's; null when absent), and optionally how 503 answers
 * are retried (`retries`, `retryBaseMs`, `retryMaxMs`). A missing or broken file means "same origin".
 * @returns {Promise<{apiBaseUrl: string, defaultResizeSize: number|null, retries: number, retryBaseMs: number,
 *   retryMaxMs: number}>}
 */
export async function loadConfig() {
  let raw = {};
  try {
    const response = await fetch(new URL(CONFIG_URL, document.baseURI), { cache: "no-cache" });
    if (response.ok) raw = await response.json();
  } catch {
    raw = {};
  }
  const number = (value, fallback) => (Number.isFinite(value) && value >= 0 ? value : fallback);
  return {
    apiBaseUrl: typeof raw.apiBaseUrl === "string" ? raw.apiBaseUrl.replace(/\/+$/, "") : "",
    defaultResizeSize:
      Number.isInteger(raw.defaultResizeSize) && raw.defaultResizeSize > 0 ? raw.defaultResizeSize : null,
    retries: number(raw.retries, DEFAULT_RETRIES),
    retryBaseMs: number(raw.retryBaseMs, DEFAULT_RETRY_BASE_MS),
    retryMaxMs: number(raw.retryMaxMs, DEFAULT_RETRY_MAX_MS),
  };
}

/**
 * Waits `ms` milliseconds, or rejects with the signal's reason when it aborts first.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/** True for the error a cancelled request rejects with. */
export function isAbort(error) {
  return error?.name === "AbortError";
}

function retryAfter(response) {
  // Readable cross-origin only when the API exposes it (Access-Control-Expose-Headers).
  const header = response.headers.get("Retry-After");
  const seconds = header === null ? NaN : Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const detail = body?.error ?? {};
  // API Gateway's own errors look like {"message": "..."}.
  const message =
    (typeof detail.message === "string" && detail.message) ||
    (typeof body?.message === "string" && body.message) ||
    fallbackMessage(response.status);
  return new ApiError(message, {
    status: response.status,
    code: typeof detail.code === "string" ? detail.code : `http_${response.status}`,
    retryAfterMs: retryAfter(response),
    body: body !== null && typeof body === "object" ? body : null,
  });
}

/**
 * The query string of a search: `k` (unless null or sent in the body), each label as `label=`, `offset`
 * (unless 0), and the keys of the liked and disliked results as `like=` and `dislike=`.
 * @param {{k?: number|null, labels?: string[], offset?: number, like?: string[], dislike?: string[]}} options
 * @returns {string} "" or "?..."
 */
export function searchQuery({ k = null, labels = [], offset = 0, like = [], dislike = [] } = {}) {
  const params = new URLSearchParams();
  if (k !== null) params.append("k", String(k));
  for (const label of labels) params.append("label", label);
  if (offset > 0) params.append("offset", String(offset));
  for (const key of like) params.append("like", key);
  for (const key of dislike) params.append("dislike", key);
  const text = params.toString();
  return text ? `?${text}` : "";
}

/**
 * A client for the search service at `config.apiBaseUrl` ("" = this page's origin).
 * @param {{apiBaseUrl: string, retries?: number, retryBaseMs?: number, retryMaxMs?: number}} config
 */
export function createApi(config) {
  const base = config.apiBaseUrl.replace(/\/+$/, "");
  const retries = config.retries ?? DEFAULT_RETRIES;
  const retryBaseMs = config.retryBaseMs ?? DEFAULT_RETRY_BASE_MS;
  const retryMaxMs = config.retryMaxMs ?? DEFAULT_RETRY_MAX_MS;

  const endpoint = (path) => `${base}${path}`;

  async function request(path, init = {}, { signal } = {}) {
    if (signal?.aborted) throw signal.reason;
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, REQUEST_TIMEOUT_MS);
    const forward = () => controller.abort(signal.reason);
    signal?.addEventListener("abort", forward, { once: true });
    try {
      let response;
      try {
        const { json, ...options } = init;
        response = await fetch(endpoint(path), {
          ...options,
          signal: controller.signal,
          headers: json
            ? { Accept: "application/json", "Content-Type": "application/json" }
            : { Accept: "application/json" },
        });
      } catch {
        throw networkError();
      }
      if (!response.ok) throw await errorFrom(response);
      try {
        return { status: response.status, body: await response.json() };
      } catch {
        if (signal?.aborted || timedOut) throw networkError();
        throw new ApiError(NO_ANSWER.bad_response, {
          status: response.status,
          code: "bad_response",
        });
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", forward);
    }

    function networkError() {
      if (signal?.aborted) return signal.reason;
      const code = timedOut ? "timeout" : "network";
      return new ApiError(NO_ANSWER[code], { code });
    }
  }

  /**
   * Runs `attempt` until it succeeds, retrying 503/429 answers with exponential back-off (or the server's
   * Retry-After), each pause at most `retryMaxMs`.
   * `onRetry({attempt, of, delayMs, error})` is told before each pause.
   */
  async function withRetry(attempt, { signal, onRetry } = {}) {
    for (let n = 0; ; n += 1) {
      try {
        return await attempt();
      } catch (error) {
        if (!(error instanceof ApiError) || !error.retryable || n >= retries) throw error;
        const delayMs = Math.min(error.retryAfterMs ?? retryBaseMs * 2 ** n, retryMaxMs);
        onRetry?.({ attempt: n + 2, of: retries + 1, delayMs, error });
        await sleep(delayMs, signal);
      }
    }
  }

  return {
    /** The API base URL this client talks to ("" = same origin). */
    baseUrl: base,

    /**
     * `GET /health`: the HealthResponse once the service is ready; asking also makes it load its model.
     * A 503 ("unavailable") is retried like a search, then rejects with an ApiError carrying its message.
     * @param {{signal?: AbortSignal, onRetry?: Function}} [options]
     * @returns {Promise<object>}
     */
    async health({ signal, onRetry } = {}) {
      return withRetry(async () => (await request("/health", { method: "GET" }, { signal })).body, {
        signal,
        onRetry,
      });
    },

    /**
     * `POST /search` with the image as multipart field `image`; retries while the service warms up.
     * @param {Blob} image
     * @param {number|null} k null: the service's default
     * @param {{signal?: AbortSignal, onRetry?: Function, filename?: string, labels?: string[],
     *   offset?: number, like?: string[], dislike?: string[]}} [options] `labels`: only results with one of
     *   them; `offset`: results to skip; `like`, `dislike`: keys of results to see more and less like
     * @returns {Promise<object>} the SearchResponse
     */
    async search(image, k, { signal, onRetry, filename = "query.jpg", labels = [], offset = 0, like, dislike } = {}) {
      const path = `/search${searchQuery({ labels, offset, like, dislike })}`;
      return withRetry(
        async () => {
          const form = new FormData();
          form.append("image", image, filename);
          if (k !== null) form.append("k", String(k));
          return (await request(path, { method: "POST", body: form }, { signal })).body;
        },
        { signal, onRetry },
      );
    },

    /**
     * `POST /search` with JSON `{"url": ...}`: the service fetches the image behind the link itself.
     * @param {string} url an https:// link to an image
     * @param {number|null} k null: the service's default
     * @param {{signal?: AbortSignal, onRetry?: Function, labels?: string[], offset?: number, like?: string[],
     *   dislike?: string[]}} [options]
     * @returns {Promise<object>} the SearchResponse
     */
    async searchUrl(url, k, { signal, onRetry, labels = [], offset = 0, like, dislike } = {}) {
      const path = `/search${searchQuery({ k, labels, offset, like, dislike })}`;
      const init = { method: "POST", body: JSON.stringify({ url }), json: true };
      return withRetry(async () => (await request(path, init, { signal })).body, { signal, onRetry });
    },

    /**
     * `GET /similar?key=`: neighbours of an image of the collection named by its key, which means the same
     * image in every build of the index (ids do not). With `key` null, the `like` keys are the query.
     * @param {string|null} key
     * @param {number|null} k null: the service's default
     * @param {{signal?: AbortSignal, onRetry?: Function, labels?: string[], offset?: number, like?: string[],
     *   dislike?: string[]}} [options]
     * @returns {Promise<object>} the SearchResponse (query set when `key` is)
     */
    async similarByKey(key, k, { signal, onRetry, labels = [], offset = 0, like, dislike } = {}) {
      const query = searchQuery({ k, labels, offset, like, dislike });
      const path =
        key === null ? `/similar${query}` : `/similar?key=${encodeURIComponent(key)}${query.replace(/^\?/, "&")}`;
      return withRetry(async () => (await request(path, { method: "GET" }, { signal })).body, {
        signal,
        onRetry,
      });
    },

    /**
     * `GET /images/{id}/similar?k=`: neighbours of the image with id `id` in the live build. Only for links
     * made before results carried keys (`?similar=ID`); results are looked up by key.
     * @param {number} id
     * @param {number|null} k null: the service's default
     * @param {{signal?: AbortSignal, onRetry?: Function, labels?: string[], offset?: number, like?: string[],
     *   dislike?: string[]}} [options]
     * @returns {Promise<object>} the SearchResponse (query_id set)
     */
    async similar(id, k, { signal, onRetry, labels = [], offset = 0, like, dislike } = {}) {
      const path = `/images/${encodeURIComponent(id)}/similar${searchQuery({ k, labels, offset, like, dislike })}`;
      return withRetry(async () => (await request(path, { method: "GET" }, { signal })).body, {
        signal,
        onRetry,
      });
    },

    /**
     * Resolves a result's `url`: absolute URLs (presigned S3) are kept, relative ones are under the API base.
     * @param {string} url
     * @returns {string}
     */
    resolveUrl(url) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(url) || url.startsWith("//")) return url;
      if (!base) return new URL(url, document.baseURI).href;
      return url.startsWith("/") ? `${base}${url}` : `${base}/${url}`;
    },
  };
}

// Wiring: user actions from the view become API calls; answers become view updates and history entries.

import { ApiError, createApi, isAbort, loadConfig } from "./api.js";
import { explain, sentence, withStop } from "./messages.js";
import { NotDecodableError, resizeForUpload } from "./resize.js";
import { View } from "./view.js";

/** How long an upload waits for a pending /health (to learn the resize size) before using config.json's. */
const HEALTH_WAIT_MS = 4_000;
/**
 * Results older than this are searched again when Back/Forward returns to them: their image links may be
 * presigned S3 URLs, which expire (DEEPFOOD_PRESIGN_EXPIRES_S, 900 s by default).
 */
const STALE_RESULTS_MS = 10 * 60 * 1000;

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function megabytes(bytes) {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** What to tell a person about an error, in words. */
function describe(error) {
  if (error instanceof ApiError) return explain(error.status, error.message);
  if (error instanceof NotDecodableError) return sentence(error.message);
  return `Something went wrong in this page: ${error?.message ?? error}`;
}

/** The controller: one search at a time, every finished search a history entry. */
export class App {
  /**
   * @param {View} view
   * @param {ReturnType<typeof createApi>} api
   * @param {{defaultResizeSize?: number|null}} [options] the shorter side of uploads until /health names the
   *   model's (config.json's `defaultResizeSize`); without either, photos go up at their own size
   */
  constructor(view, api, { defaultResizeSize = null } = {}) {
    this.view = view;
    this.api = api;
    this.resizeSize = defaultResizeSize ?? Infinity;
    this.maxUploadBytes = null;
    /** True once /health has told the service's k limits (also in a 503 answer). */
    this.knowsLimits = false;
    this.pendingHealth = null;
    this.userChoseK = false;
    this.inflight = null;
    this.query = null;
    this.previewUrl = null;
    /** Resized uploads by their object URL, so history entries can be searched again with another k. */
    this.uploads = new Map();
  }

  /** Binds the view and starts the health check; restores the history entry after a reload. */
  start() {
    this.view.bindFile((file) => this.searchFile(file));
    this.view.bindResult((match) => this.searchSimilar(match, { focus: true }));
    this.view.bindK(() => {
      this.userChoseK = true;
      this.rerun();
    });
    window.addEventListener("popstate", (event) => this.restore(event.state));
    window.addEventListener("online", () => this.recheckHealth());
    this.checkHealth();

    const state = history.state;
    const similarId = new URLSearchParams(location.search).get("similar");
    if (state?.response) {
      this.restore(state);
    } else if (similarId !== null && /^\d+$/.test(similarId)) {
      this.searchSimilar({ id: Number(similarId) }, { replace: true });
    }
  }

  /**
   * Asks /health (unless a request is already out) for the limits and the model's resize size.
   * @returns {Promise<void>} settles when the service has answered or could not be reached
   */
  checkHealth() {
    this.pendingHealth ??= this.askHealth().finally(() => {
      this.pendingHealth = null;
    });
    return this.pendingHealth;
  }

  /** Asks /health again if it has never told the limits (unreachable so far, or answered by a gateway). */
  recheckHealth() {
    if (!this.knowsLimits) this.checkHealth();
  }

  async askHealth() {
    this.view.setServiceInfo("Connecting to the search service…");
    try {
      const health = await this.api.health({
        onRetry: ({ delayMs, error }) => {
          this.applyLimits(error.body?.limits);
          this.view.setServiceInfo(`The search service is warming up; checking again in ${seconds(delayMs)}…`);
        },
      });
      this.applyHealth(health);
    } catch (error) {
      if (error instanceof ApiError) this.applyLimits(error.body?.limits);
      const again = this.knowsLimits ? "" : " This page asks again when you search.";
      this.view.setServiceInfo(`The search service is not available: ${withStop(error.message)}${again}`);
    }
  }

  applyHealth(health) {
    const resize = health.model?.resize_size;
    if (Number.isInteger(resize) && resize > 0) this.resizeSize = resize;
    this.applyLimits(health.limits);
    const count = health.index?.count;
    this.view.setServiceInfo(
      Number.isInteger(count)
        ? `Ready: ${count.toLocaleString()} photos in the collection.`
        : "The search service is ready.",
    );
  }

  /** Takes `max_upload_bytes` and the k choices from /health's `limits`, when they are there. */
  applyLimits(limits) {
    const { default_k: defaultK, max_k: maxK, max_upload_bytes: maxUploadBytes } = limits ?? {};
    if (Number.isInteger(maxUploadBytes) && maxUploadBytes > 0) this.maxUploadBytes = maxUploadBytes;
    if (!(Number.isInteger(maxK) && maxK > 0 && Number.isInteger(defaultK) && defaultK > 0)) return;
    this.view.setKOptions(Math.min(defaultK, maxK), maxK, this.userChoseK || this.knowsLimits);
    this.knowsLimits = true;
  }

  /** Runs `task(signal)` as the one current search, cancelling the previous one; shows its errors. */
  async run(task) {
    this.inflight?.abort();
    const controller = new AbortController();
    this.inflight = controller;
    this.view.clearError();
    try {
      await task(controller.signal);
    } catch (error) {
      if (controller.signal.aborted || isAbort(error)) return; // superseded by a newer search
      this.view.setStatus("");
      this.view.showError(describe(error));
      if (!(error instanceof ApiError) && !(error instanceof NotDecodableError)) console.error(error);
    } finally {
      if (this.inflight === controller) {
        this.inflight = null;
        this.view.setBusy(false);
      }
    }
  }

  retryNotice(signal) {
    return ({ attempt, of, delayMs }) => {
      if (!signal.aborted) {
        this.view.setStatus(
          `The search service is warming up; trying again in ${seconds(delayMs)} (attempt ${attempt} of ${of})…`,
        );
      }
    };
  }

  /**
   * Shows the photo at once, shrinks it, uploads it and shows its neighbours.
   * @param {File} file
   */
  searchFile(file) {
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = URL.createObjectURL(file);
    const caption = file.name ? `Your photo: ${file.name}` : "Your photo";
    this.view.showQuery(this.previewUrl, caption);
    this.view.renderPredictions([]);

    return this.run(async (signal) => {
      this.view.setBusy(true, "Preparing your photo…");
      this.recheckHealth();
      await Promise.race([this.pendingHealth, delay(HEALTH_WAIT_MS)]);
      signal.throwIfAborted();
      const query = { kind: "upload", caption, src: null };
      let upload;
      try {
        const resized = await resizeForUpload(file, { shortSide: this.resizeSize });
        query.src = URL.createObjectURL(resized.blob);
        this.uploads.set(query.src, resized.blob);
        upload = resized.blob;
      } catch (error) {
        if (!(error instanceof NotDecodableError)) throw error;
        // This browser cannot decode it (not an image, or e.g. HEIC): the service decides, and says why.
        if (this.maxUploadBytes && file.size > this.maxUploadBytes) {
          throw new NotDecodableError(
            `This browser cannot read that file as an image, and at ${megabytes(file.size)} it is over the ` +
              `service's ${megabytes(this.maxUploadBytes)} limit. Try a JPEG, PNG or WebP photo.`,
          );
        }
        upload = file;
      }
      signal.throwIfAborted();
      this.query = { ...query, blob: upload, filename: upload === file ? file.name || "upload" : "query.jpg" };
      await this.searchQuery(this.query, signal, "push");
    });
  }

  /**
   * Searches from an image of the collection (a clicked result, or `?similar=ID`).
   * @param {{id: number, key?: string, label?: string|null, url?: string}} match
   * @param {{focus?: boolean, replace?: boolean}} [options]
   */
  searchSimilar(match, { focus = false, replace = false } = {}) {
    const name = match.label || match.key?.split("/").pop() || `photo #${match.id}`;
    const caption = `Dishes similar to ${name}`;
    const query = { kind: "similar", id: match.id, name, caption, src: match.url ?? null };
    if (query.src) this.view.showQuery(query.src, query.caption);
    this.view.renderPredictions([]);
    this.recheckHealth();
    return this.run(async (signal) => {
      this.query = query;
      await this.searchQuery(query, signal, replace ? "replace" : "push");
      if (focus) this.view.focusResults();
    });
  }

  /** Searches the current query again with the newly chosen k, replacing the history entry. */
  rerun() {
    const query = this.query;
    if (!query) return;
    return this.run((signal) => this.searchQuery(query, signal, "replace"));
  }

  async searchQuery(query, signal, historyMode) {
    const k = this.view.k;
    const onRetry = this.retryNotice(signal);
    let response;
    if (query.kind === "upload") {
      this.view.setBusy(true, "Searching for similar dishes…");
      response = await this.api.search(query.blob, k, { signal, onRetry, filename: query.filename });
    } else {
      this.view.setBusy(true, `${query.caption}: searching…`);
      response = await this.api.similar(query.id, k, { signal, onRetry });
    }
    signal.throwIfAborted();
    if (!query.src && response.query?.url) {
      // a `?similar=ID` link knows only the id; the service answers with the image itself
      query.src = this.api.resolveUrl(response.query.url);
    }
    const state = {
      query: {
        kind: query.kind,
        id: query.id ?? null,
        name: query.name ?? null,
        caption: query.caption,
        src: query.src,
      },
      k,
      response,
      savedAt: Date.now(),
    };
    const url = query.kind === "similar" ? `?similar=${query.id}` : location.pathname;
    if (historyMode === "push") history.pushState(state, "", url);
    else history.replaceState(state, "", url);
    this.render(state);
  }

  /** Back/forward: shows the entry's results again from `history.state`, without asking the service. */
  restore(state) {
    this.inflight?.abort();
    this.inflight = null;
    this.view.setBusy(false);
    if (!state?.response) {
      this.query = null;
      this.view.reset();
      return;
    }
    const { query } = state;
    this.query =
      query.kind === "upload"
        ? { ...query, blob: this.uploads.get(query.src), filename: "query.jpg" }
        : { ...query };
    if (query.kind === "upload" && !this.query.blob) this.query = null; // from before a reload
    this.render(state);
    const stale = Date.now() - (state.savedAt ?? 0) > STALE_RESULTS_MS;
    if (stale && this.query) {
      const again = this.query;
      this.run((signal) => this.searchQuery(again, signal, "replace"));
    }
  }

  render(state) {
    const { query, response, k } = state;
    this.view.clearError();
    if (query.src) this.view.showQuery(query.src, query.caption);
    else this.view.hideQuery();
    this.view.selectK(k);
    this.view.renderPredictions(response.predictions ?? []);
    const matches = response.results.map((m) => ({ ...m, url: this.api.resolveUrl(m.url) }));
    const n = matches.length;
    const took = response.timings ? `, found in ${seconds(response.timings.total_ms)}` : "";
    const dishes = n === 1 ? "dish" : "dishes";
    const what = query.kind === "upload" ? `${n} similar ${dishes}` : `${n} ${dishes} similar to ${query.name}`;
    const summary = n === 0 ? "No similar dishes found." : `${what}${took}.`;
    this.view.renderResults(matches, summary);
    this.view.setStatus(summary, { visible: false });
  }
}

const view = new View(document);
const config = await loadConfig();
new App(view, createApi(config), { defaultResizeSize: config.defaultResizeSize }).start();

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

/** Label chips offered at most, taken from the results of a search without a filter. */
const MAX_CHIPS = 12;

/** The labels of `results`, nearest first, each once. */
function chipLabels(results) {
  return [...new Set(results.map((m) => m.label).filter(Boolean))].slice(0, MAX_CHIPS);
}

/** True when index.html's Content-Security-Policy (img-src) lets the page show the picture at `url`. */
function showable(url) {
  try {
    const { protocol, hostname } = new URL(url);
    return protocol === "https:" || (protocol === "http:" && ["localhost", "127.0.0.1"].includes(hostname));
  } catch {
    return false;
  }
}

function hostOf(url) {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** No liked and no disliked results. */
const NO_PICKS = Object.freeze({ liked: [], disliked: [] });

/**
 * The address bar for a search: `?key=` for an image of the collection, then the keys of the liked and disliked
 * results as `like=` and `dislike=`; the bare page for an upload or a link without picks (a photo has no address).
 */
function addressOf(query, picks = NO_PICKS) {
  const parts = [];
  if (query.kind === "similar") parts.push(query.key ? `key=${encodeURIComponent(query.key)}` : `similar=${query.id}`);
  for (const p of picks.liked) parts.push(`like=${encodeURIComponent(p.key)}`);
  for (const p of picks.disliked) parts.push(`dislike=${encodeURIComponent(p.key)}`);
  return parts.length ? `?${parts.join("&")}` : location.pathname;
}

/** Picks named only by their keys (a link to a refined search): the label and picture come from the results. */
function picksFromKeys(like, dislike) {
  const pick = (key) => ({ key, label: null, url: null, id: null });
  const liked = [...new Set(like)];
  return { liked: liked.map(pick), disliked: [...new Set(dislike)].filter((k) => !liked.includes(k)).map(pick) };
}

/** `picks` with `match` liked or disliked (`vote`), or taken back when it already was. */
function withVote(picks, match, vote) {
  const own = vote === "like" ? "liked" : "disliked";
  const had = picks[own].some((p) => p.key === match.key);
  const next = {
    liked: picks.liked.filter((p) => p.key !== match.key),
    disliked: picks.disliked.filter((p) => p.key !== match.key),
  };
  if (!had) next[own] = [...next[own], { key: match.key, label: match.label, url: match.url, id: match.id }];
  return next;
}

/** "1 liked and 2 disliked" for the summary, "" without picks. */
function picksSummary({ liked, disliked }) {
  const parts = [];
  if (liked.length) parts.push(`${liked.length} liked`);
  if (disliked.length) parts.push(`${disliked.length} disliked`);
  return parts.join(" and ");
}

/** What to tell a person about an error, in words; `link`: the search was for a pasted link. */
function describe(error, { link = false } = {}) {
  if (link && error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
    return `That link could not be searched: ${withStop(error.message)}`;
  }
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
    /** The labels the results are filtered by, and the label chips offered. */
    this.labels = [];
    this.chips = [];
    /** The service's max_k once /health has told it: offset + k may not pass it. */
    this.maxK = null;
    /** The results liked and disliked for the current query: the search is steered by them. */
    this.picks = NO_PICKS;
  }

  /** Binds the view and starts the health check; restores the history entry after a reload. */
  start() {
    this.view.bindFile((file) => this.searchFile(file));
    this.view.bindResult((match) => this.searchSimilar(match, { focus: true }));
    this.view.bindVote((match, vote) => this.vote(match, vote));
    this.view.bindUrl((url) => this.searchUrl(url));
    this.view.bindChip((label) => this.toggleLabel(label));
    this.view.bindMore(() => this.showMore());
    this.view.bindK(() => {
      this.userChoseK = true;
      this.rerun();
    });
    window.addEventListener("popstate", (event) => this.restore(event.state));
    window.addEventListener("online", () => this.recheckHealth());
    this.checkHealth();

    const state = history.state;
    const params = new URLSearchParams(location.search);
    const key = params.get("key");
    const similarId = params.get("similar"); // links from before results carried keys
    const picks = picksFromKeys(params.getAll("like"), params.getAll("dislike"));
    if (state?.response) {
      this.restore(state);
    } else if (key) {
      this.searchSimilar({ key }, { replace: true, picks });
    } else if (similarId !== null && /^\d+$/.test(similarId)) {
      this.searchSimilar({ id: Number(similarId) }, { replace: true, picks });
    } else if (picks.liked.length) {
      this.searchPicks(picks);
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
    this.maxK = maxK;
    this.view.setKOptions(Math.min(defaultK, maxK), maxK, this.userChoseK || this.knowsLimits);
    this.knowsLimits = true;
  }

  /**
   * Runs `task(signal)` as the one current search, cancelling the previous one; shows its errors (`link`: as
   * the errors of a pasted link).
   */
  async run(task, { link = false } = {}) {
    this.inflight?.abort();
    const controller = new AbortController();
    this.inflight = controller;
    this.view.clearError();
    try {
      await task(controller.signal);
    } catch (error) {
      if (controller.signal.aborted || isAbort(error)) return; // superseded by a newer search
      this.view.setStatus("");
      this.view.showError(describe(error, { link }));
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
      this.labels = [];
      this.picks = NO_PICKS;
      await this.searchQuery(this.query, signal, "push");
    });
  }

  /**
   * Searches with the photo a link points to: the service fetches it.
   * @param {string} url
   */
  searchUrl(url) {
    const caption = `Photo from ${hostOf(url)}`;
    const query = { kind: "url", url, caption, src: showable(url) ? url : null };
    if (query.src) this.view.showQuery(query.src, caption);
    else this.view.hideQuery();
    this.view.renderPredictions([]);
    this.recheckHealth();
    return this.run(
      async (signal) => {
        this.query = query;
        this.labels = [];
        this.picks = NO_PICKS;
        await this.searchQuery(query, signal, "push");
      },
      { link: true },
    );
  }

  /**
   * Searches from an image of the collection: a clicked result or a `?key=` link, both by its key, which names
   * the same image in every build of the index; or an old `?similar=ID` link, by id.
   * @param {{key?: string, id?: number, label?: string|null, url?: string}} match
   * @param {{focus?: boolean, replace?: boolean, picks?: {liked: object[], disliked: object[]}}} [options]
   *   `picks`: results liked and disliked already (a link to a refined search)
   */
  searchSimilar(match, { focus = false, replace = false, picks = NO_PICKS } = {}) {
    const name = match.label || match.key?.split("/").pop() || `photo #${match.id}`;
    const caption = `Dishes similar to ${name}`;
    const query = {
      kind: "similar",
      key: match.key ?? null,
      id: match.key ? null : match.id,
      name,
      caption,
      src: match.url ?? null,
    };
    if (query.src) this.view.showQuery(query.src, query.caption);
    this.view.renderPredictions([]);
    this.recheckHealth();
    return this.run(async (signal) => {
      this.query = query;
      this.labels = [];
      this.picks = picks;
      await this.searchQuery(query, signal, replace ? "replace" : "push");
      if (focus) this.view.focusResults();
    });
  }

  /**
   * Searches from liked results alone (a link with `like=` keys and no `key=`, or picks whose photo this page
   * no longer holds).
   * @param {{liked: object[], disliked: object[]}} picks at least one liked
   * @param {{replace?: boolean}} [options]
   */
  searchPicks(picks, { replace = true } = {}) {
    const query = { kind: "picks", key: null, id: null, name: null, caption: "Your picks", src: null };
    this.view.hideQuery();
    this.view.renderPredictions([]);
    this.recheckHealth();
    return this.run(async (signal) => {
      this.query = query;
      this.labels = [];
      this.picks = picks;
      await this.searchQuery(query, signal, replace ? "replace" : "push");
    });
  }

  /**
   * Likes or dislikes a result (`vote`), or takes that back, and searches again without another upload: the
   * same query, now steered by every pick; a new history entry, so Back undoes it.
   * @param {{key: string, id: number, label: string|null, url: string|null}} match
   * @param {"like"|"dislike"} vote
   */
  vote(match, vote) {
    const next = withVote(this.picks, match, vote);
    let query = this.query;
    if (!query || query.kind === "picks") {
      if (next.liked.length === 0) {
        this.view.showError(
          query
            ? "Searching from your picks needs at least one dish you want more of: press More on one."
            : "This page no longer holds your photo (the page was reloaded): press More on a dish to search " +
                "from it, or choose your photo again.",
        );
        return;
      }
      query = { kind: "picks", key: null, id: null, name: null, caption: "Your picks", src: null };
    }
    const before = { query: this.query, picks: this.picks };
    return this.run(async (signal) => {
      this.query = query;
      this.picks = next;
      try {
        await this.searchQuery(query, signal, "push");
      } catch (error) {
        this.query = before.query;
        this.picks = before.picks;
        throw error;
      }
      this.view.focusPick(match.key, vote);
    });
  }

  /**
   * Turns the filter by `label` on or off and searches the current query again.
   * @param {string} label
   */
  toggleLabel(label) {
    const query = this.query;
    if (!query) return;
    this.labels = this.labels.includes(label) ? this.labels.filter((l) => l !== label) : [...this.labels, label];
    this.view.renderChips(this.chips, this.labels);
    return this.run((signal) => this.searchQuery(query, signal, "replace"));
  }

  /** Asks for the results after the ones shown (the answer's `next_offset`) and adds them below. */
  showMore() {
    const query = this.query;
    const state = history.state;
    const offset = state?.response?.next_offset;
    if (!query || !Number.isInteger(offset)) return;
    const k = this.maxK ? Math.min(state.response.k, this.maxK - offset) : state.response.k;
    return this.run(async (signal) => {
      this.view.setBusy(true, "Finding more dishes…");
      const page = await this.ask(query, { k, offset, signal, onRetry: this.retryNotice(signal) });
      signal.throwIfAborted();
      const shown = state.response.results.length;
      const response = {
        ...state.response,
        results: [...state.response.results, ...page.results],
        next_offset: page.next_offset,
        duplicates_collapsed: (state.response.duplicates_collapsed ?? 0) + (page.duplicates_collapsed ?? 0),
      };
      const next = { ...state, response }; // savedAt stays: the first thumbnails' links expire first
      history.replaceState(next, "", location.href);
      this.render(next);
      this.view.focusResult(shown);
    });
  }

  /** One request for `query`'s results, with the current label filter and picks. */
  ask(query, { k, offset = 0, signal, onRetry }) {
    const like = this.picks.liked.map((p) => p.key);
    const dislike = this.picks.disliked.map((p) => p.key);
    const options = { signal, onRetry, labels: this.labels, offset, like, dislike };
    if (query.kind === "upload") return this.api.search(query.blob, k, { ...options, filename: query.filename });
    if (query.kind === "url") return this.api.searchUrl(query.url, k, options);
    if (query.kind === "picks") return this.api.similarByKey(null, k, options);
    if (query.key) return this.api.similarByKey(query.key, k, options);
    return this.api.similar(query.id, k, options);
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
    const busy = {
      upload: "Searching for similar dishes…",
      url: "Fetching the photo and searching…",
    };
    this.view.setBusy(true, busy[query.kind] ?? `${query.caption}: searching…`);
    const response = await this.ask(query, { k, signal, onRetry });
    signal.throwIfAborted();
    if (!query.src && response.query?.url) {
      // a `?key=` or `?similar=ID` link knows no picture; the service answers with the image itself
      query.src = this.api.resolveUrl(response.query.url);
    }
    if (query.kind === "similar" && !query.key && response.query?.key) {
      query.key = response.query.key; // an old `?similar=ID` link: from now on, by key
      query.id = null;
    }
    if (this.labels.length === 0) this.chips = chipLabels(response.results);
    const state = {
      query: {
        kind: query.kind,
        key: query.key ?? null,
        id: query.id ?? null,
        url: query.url ?? null,
        name: query.name ?? null,
        caption: query.caption,
        src: query.src,
      },
      k,
      labels: this.labels,
      chips: this.chips,
      picks: this.picks,
      response,
      savedAt: Date.now(),
    };
    if (historyMode === "push") history.pushState(state, "", addressOf(query, this.picks));
    else history.replaceState(state, "", addressOf(query, this.picks));
    this.render(state);
  }

  /** Back/forward: shows the entry's results again from `history.state`, without asking the service. */
  restore(state) {
    this.inflight?.abort();
    this.inflight = null;
    this.view.setBusy(false);
    if (!state?.response) {
      this.query = null;
      this.labels = [];
      this.chips = [];
      this.picks = NO_PICKS;
      this.view.reset();
      return;
    }
    const { query } = state;
    this.labels = state.labels ?? [];
    this.chips = state.chips ?? [];
    this.picks = state.picks ?? NO_PICKS;
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
    const labels = state.labels ?? [];
    this.view.clearError();
    if (query.src) this.view.showQuery(query.src, query.caption);
    else this.view.hideQuery();
    if (query.kind === "url") this.view.setUrl(query.url);
    this.view.selectK(k);
    this.view.renderPredictions(response.predictions ?? []);
    const matches = response.results.map((m) => ({ ...m, url: this.api.resolveUrl(m.url) }));
    const n = matches.length;
    const took = response.timings ? `, found in ${seconds(response.timings.total_ms)}` : "";
    const dishes = n === 1 ? "dish" : "dishes";
    const what = {
      similar: `${n} ${dishes} similar to ${query.name}`,
      picks: `${n} ${dishes} like your picks`,
    }[query.kind] ?? `${n} similar ${dishes}`;
    const picks = state.picks ?? NO_PICKS;
    const steered = picksSummary(picks);
    const only = (labels.length ? ` labelled ${labels.join(" or ")}` : "") + (steered ? `, steered by ${steered}` : "");
    const collapsed = response.duplicates_collapsed ?? 0;
    const hidden = collapsed ? ` ${collapsed} near-duplicate${collapsed === 1 ? "" : "s"} left out.` : "";
    const none = labels.length ? `No similar dishes labelled ${labels.join(" or ")}.` : "No similar dishes found.";
    const summary = n === 0 ? none : `${what}${only}${took}.${hidden}`;
    this.view.renderResults(matches, summary);
    this.view.renderChips(state.chips ?? [], labels);
    const resolved = (p) => ({ ...p, url: p.url ? this.api.resolveUrl(p.url) : null });
    this.view.renderPicks({ liked: picks.liked.map(resolved), disliked: picks.disliked.map(resolved) });
    this.view.setMore(Number.isInteger(response.next_offset));
    this.view.setStatus(summary, { visible: false });
  }
}

const view = new View(document);
const config = await loadConfig();
new App(view, createApi(config), { defaultResizeSize: config.defaultResizeSize }).start();

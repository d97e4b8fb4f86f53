// Owns the DOM: finds the elements once, renders state into them, reports user actions to handlers.
// Text from people or the service only ever goes in through textContent or attributes, never as HTML.

const THUMB_SIZE = 224;

function percent(value) {
  return `${Math.round(Math.max(0, Math.min(1, value)) * 100)}%`;
}

/**
 * The numbers of results offered for the service's limits: `defaultK`, half of it, and its doublings up to
 * `maxK`, which is always the last choice. A doubling less than √2 below `maxK` gives way to it, so that
 * neighbouring choices are at least √2 apart (5 and 30 give 3, 5, 10, 20, 30).
 * @param {number} defaultK at least 1, at most `maxK`
 * @param {number} maxK
 * @returns {number[]} ascending
 */
export function kChoices(defaultK, maxK) {
  const choices = new Set([Math.max(1, Math.round(defaultK / 2)), defaultK]);
  for (let k = defaultK * 2; k * Math.SQRT2 <= maxK; k *= 2) choices.add(k);
  choices.add(maxK);
  return [...choices].filter((k) => k <= maxK).sort((a, b) => a - b);
}

/** The two feedback toggles of a result: what each says to a screen reader and shows. */
const VOTES = {
  like: { name: "More like this", shown: "More", mark: "+" },
  dislike: { name: "Less like this", shown: "Less", mark: "−" },
};

function labelOf(match) {
  if (match.label) return match.label;
  const name = String(match.key ?? "").split("/").pop();
  return name || `image ${match.id}`;
}

/** The page: elements looked up once, renderers, and event bindings. */
export class View {
  /** @param {Document} doc */
  constructor(doc = document) {
    this.doc = doc;
    const $ = (id) => {
      const el = doc.getElementById(id);
      if (!el) throw new Error(`index.html lacks #${id}`);
      return el;
    };
    this.fileInput = $("file");
    this.kSelect = $("k");
    this.dropOverlay = $("drop-overlay");
    this.status = $("status");
    this.statusText = $("status-text");
    this.error = $("error");
    this.query = $("query");
    this.queryImage = $("query-image");
    this.queryCaption = $("query-caption");
    this.predictions = $("predictions");
    this.predictionList = $("prediction-list");
    this.resultsSection = $("results-section");
    this.resultsHeading = $("results-heading");
    this.resultsSummary = $("results-summary");
    this.results = $("results");
    this.service = $("service");
    this.urlForm = $("url-form");
    this.urlInput = $("url");
    this.filters = $("filters");
    this.chips = $("chips");
    this.more = $("more");
    this.picks = $("picks");
    this.pickList = $("pick-list");
    this.queryImage.addEventListener("error", () => {
      this.query.hidden = true;
    });
  }

  /**
   * Calls `handler(file)` for a photo chosen with the picker, dropped on the page, or pasted.
   * @param {(file: File) => void} handler
   */
  bindFile(handler) {
    this.doc.getElementById("search-form")?.addEventListener("submit", (event) => event.preventDefault());
    this.fileInput.addEventListener("change", () => {
      const [file] = this.fileInput.files;
      if (file) handler(file);
      this.fileInput.value = ""; // choosing the same photo again still fires "change"
    });

    let depth = 0;
    const hasFiles = (event) => Array.from(event.dataTransfer?.types ?? []).includes("Files");
    this.doc.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth += 1;
      this.dropOverlay.hidden = false;
    });
    this.doc.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    this.doc.addEventListener("dragleave", (event) => {
      if (!hasFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.dropOverlay.hidden = true;
    });
    this.doc.addEventListener("drop", (event) => {
      depth = 0;
      this.dropOverlay.hidden = true;
      const file = event.dataTransfer?.files?.[0];
      if (!file) return;
      event.preventDefault();
      handler(file);
    });

    this.doc.addEventListener("paste", (event) => {
      const items = Array.from(event.clipboardData?.items ?? []);
      const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
      const file = item?.getAsFile();
      if (!file) return;
      event.preventDefault();
      handler(file);
    });
  }

  /**
   * Calls `handler(url)` when a link to a photo is submitted (the browser has checked it is a URL).
   * @param {(url: string) => void} handler
   */
  bindUrl(handler) {
    this.urlForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const url = this.urlInput.value.trim();
      if (url) handler(url);
    });
  }

  /**
   * Calls `handler(label)` when a label chip is pressed (click, Enter or Space).
   * @param {(label: string) => void} handler
   */
  bindChip(handler) {
    this.chips.addEventListener("click", (event) => {
      const chip = event.target.closest("button[data-label]");
      if (chip && this.chips.contains(chip)) handler(chip.dataset.label);
    });
  }

  /**
   * Calls `handler()` when "Show more" is pressed.
   * @param {() => void} handler
   */
  bindMore(handler) {
    this.more.addEventListener("click", () => handler());
  }

  /**
   * Calls `handler(k)` when the number of results is changed.
   * @param {(k: number) => void} handler
   */
  bindK(handler) {
    this.kSelect.addEventListener("change", () => handler(this.k));
  }

  /**
   * Calls `handler(match)` when a result is chosen (click, Enter or Space on its button).
   * @param {(match: {id: number, key: string, label: string|null, url: string}) => void} handler
   */
  bindResult(handler) {
    this.results.addEventListener("click", (event) => {
      const button = event.target.closest("button.result[data-id]");
      if (!button || !this.results.contains(button)) return;
      handler({
        id: Number(button.dataset.id),
        key: button.dataset.key,
        label: button.dataset.label || null,
        url: button.dataset.url,
      });
    });
  }

  /**
   * Calls `handler(match, vote)` when a "More like this" (`vote` "like") or "Less like this" ("dislike") toggle
   * is pressed, on a result or on one of the picks.
   * @param {(match: {id: number, key: string, label: string|null, url: string}, vote: "like"|"dislike") => void}
   *   handler
   */
  bindVote(handler) {
    for (const list of [this.results, this.pickList]) {
      list.addEventListener("click", (event) => {
        const button = event.target.closest("button[data-vote]");
        if (!button || !list.contains(button)) return;
        const { key, label, url, id } = button.dataset;
        handler({ id: Number(id), key, label: label || null, url: url || null }, button.dataset.vote);
      });
    }
  }

  /**
   * The "More like this" and "Less like this" toggles for `match`; `pressed` is the one that is on, if any.
   * @param {{id: number, key: string, label: string|null, url: string|null}} match
   * @param {"like"|"dislike"|null} pressed
   * @returns {HTMLElement}
   */
  voteButtons(match, pressed) {
    const group = this.doc.createElement("div");
    group.className = "votes";
    const label = labelOf(match);
    for (const [vote, words] of Object.entries(VOTES)) {
      const button = this.doc.createElement("button");
      button.type = "button";
      button.className = `vote ${vote}`;
      button.dataset.vote = vote;
      button.dataset.key = match.key;
      button.dataset.label = match.label ?? "";
      button.dataset.url = match.url ?? "";
      button.dataset.id = String(match.id ?? "");
      button.setAttribute("aria-pressed", String(pressed === vote));
      button.setAttribute("aria-label", `${words.name}: ${label}`);
      const mark = this.doc.createElement("span");
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = words.mark;
      button.append(mark, ` ${words.shown}`);
      group.append(button);
    }
    return group;
  }

  /**
   * Shows the liked and disliked results (they are left out of the results), each with its toggles pressed as
   * chosen, so a pick can be taken back or turned round; hidden when there are none.
   * @param {{liked: object[], disliked: object[]}} picks matches with `url` resolved, or null when not known
   */
  renderPicks({ liked, disliked }) {
    const items = [...liked.map((m) => [m, "like"]), ...disliked.map((m) => [m, "dislike"])];
    this.picks.hidden = items.length === 0;
    this.pickList.replaceChildren(
      ...items.map(([match, vote]) => {
        const li = this.doc.createElement("li");
        li.className = `pick ${vote}`;
        if (match.url) {
          const img = this.doc.createElement("img");
          img.src = match.url;
          img.alt = "";
          img.width = 48;
          img.height = 48;
          li.append(img);
        }
        const name = this.doc.createElement("span");
        name.className = "pick-name";
        name.textContent = labelOf(match);
        li.append(name, this.voteButtons(match, vote));
        return li;
      }),
    );
  }

  /**
   * Moves keyboard focus to the `vote` toggle of the pick with `key`, else to the results heading.
   * @param {string} key
   * @param {"like"|"dislike"} vote
   */
  focusPick(key, vote) {
    const button = [...this.pickList.querySelectorAll("button[data-vote]")].find(
      (b) => b.dataset.key === key && b.dataset.vote === vote,
    );
    if (button) button.focus();
    else this.focusResults();
  }

  /** The number of results chosen; null until the service's limits are known (it then uses its default). */
  get k() {
    const k = Number(this.kSelect.value);
    return Number.isInteger(k) && k > 0 ? k : null;
  }

  /**
   * Enables the selector with `kChoices(defaultK, maxK)` and selects `defaultK`, or keeps the current choice
   * when `keepCurrent` and it is still offered.
   * @param {number} defaultK
   * @param {number} maxK
   * @param {boolean} [keepCurrent]
   */
  setKOptions(defaultK, maxK, keepCurrent = false) {
    const current = this.k;
    const choices = kChoices(defaultK, maxK);
    this.kSelect.replaceChildren(
      ...choices.map((k) => {
        const option = this.doc.createElement("option");
        option.value = String(k);
        option.textContent = String(k);
        return option;
      }),
    );
    this.kSelect.value = String(keepCurrent && choices.includes(current) ? current : defaultK);
    this.kSelect.disabled = false;
  }

  /**
   * Selects `k` in the selector when it is one of the choices.
   * @param {number} k
   */
  selectK(k) {
    if ([...this.kSelect.options].some((o) => Number(o.value) === k)) this.kSelect.value = String(k);
  }

  /**
   * Shows the picture being searched from.
   * @param {string} src an object URL or an image URL
   * @param {string} caption
   */
  showQuery(src, caption) {
    this.query.hidden = false;
    this.queryImage.src = src;
    this.queryImage.alt = caption;
    this.queryCaption.textContent = caption;
  }

  /** Hides the query picture. */
  hideQuery() {
    this.query.hidden = true;
    this.queryImage.removeAttribute("src");
  }

  /**
   * Puts `url` in the link box (a restored search by link), or empties it.
   * @param {string} url
   */
  setUrl(url) {
    this.urlInput.value = url;
  }

  /**
   * Shows a toggle chip per label (`aria-pressed` says which are on); hidden when there are none.
   * @param {string[]} labels the labels offered, in order
   * @param {string[]} selected the labels the results are filtered by
   */
  renderChips(labels, selected) {
    const all = [...new Set([...labels, ...selected])];
    this.filters.hidden = all.length === 0;
    const focused = this.doc.activeElement?.closest?.("button[data-label]")?.dataset.label;
    this.chips.replaceChildren(
      ...all.map((label) => {
        const li = this.doc.createElement("li");
        const chip = this.doc.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.label = label;
        chip.textContent = label;
        chip.setAttribute("aria-pressed", String(selected.includes(label)));
        li.append(chip);
        return li;
      }),
    );
    if (focused !== undefined) {
      // the pressed chip was replaced: keep the keyboard where it was
      [...this.chips.querySelectorAll("button[data-label]")].find((b) => b.dataset.label === focused)?.focus();
    }
  }

  /**
   * Shows or hides the "Show more" button.
   * @param {boolean} visible
   */
  setMore(visible) {
    this.more.hidden = !visible;
  }

  /**
   * Moves keyboard focus to the result at `index` (the first one "Show more" added).
   * @param {number} index
   */
  focusResult(index) {
    this.results.querySelectorAll("button.result")[index]?.focus();
  }

  /** Hides the query picture, the predictions and the results: the page as first opened. */
  reset() {
    this.query.hidden = true;
    this.queryImage.removeAttribute("src");
    this.predictions.hidden = true;
    this.predictionList.replaceChildren();
    this.results.replaceChildren();
    this.resultsSection.hidden = true;
    this.resultsSummary.textContent = "";
    this.renderChips([], []);
    this.renderPicks({ liked: [], disliked: [] });
    this.setMore(false);
    this.clearError();
    this.setStatus("");
  }

  /**
   * Shows or hides the busy indicator; `message` goes to the live status region.
   * @param {boolean} busy
   * @param {string} [message]
   */
  setBusy(busy, message) {
    this.status.classList.toggle("busy", busy);
    this.resultsSection.setAttribute("aria-busy", String(busy));
    this.doc.body.classList.toggle("busy", busy);
    if (message !== undefined) this.setStatus(message);
  }

  /**
   * Puts `message` in the polite live region (screen readers announce it); with `visible: false` it is
   * announced without being shown (when the page shows the same words elsewhere).
   * @param {string} message
   * @param {{visible?: boolean}} [options]
   */
  setStatus(message, { visible = true } = {}) {
    this.statusText.textContent = message;
    this.statusText.classList.toggle("visually-hidden", !visible);
  }

  /**
   * Shows an error message in the alert region.
   * @param {string} message
   */
  showError(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }

  /** Removes the error message. */
  clearError() {
    this.error.hidden = true;
    this.error.textContent = "";
  }

  /**
   * Shows the model's guesses for the query ("what we think this is"); hidden when there are none.
   * @param {{label: string, probability: number}[]} predictions
   */
  renderPredictions(predictions) {
    const top = (predictions ?? []).slice(0, 3);
    this.predictions.hidden = top.length === 0;
    this.predictionList.replaceChildren(
      ...top.map((p) => {
        const li = this.doc.createElement("li");
        const name = this.doc.createElement("span");
        name.className = "prediction-label";
        name.textContent = p.label;
        const bar = this.doc.createElement("span");
        bar.className = "bar";
        bar.setAttribute("aria-hidden", "true");
        const fill = this.doc.createElement("span");
        fill.style.width = percent(p.probability);
        bar.append(fill);
        const value = this.doc.createElement("span");
        value.className = "prediction-value";
        value.textContent = percent(p.probability);
        li.append(name, bar, value);
        return li;
      }),
    );
  }

  /**
   * Renders the nearest images as a grid of buttons; each one searches from that image, and has "More like this"
   * and "Less like this" toggles below it.
   * @param {{id: number, key: string, label: string|null, similarity: number, url: string}[]} matches
   *   with `url` already resolved
   * @param {string} summary e.g. "12 similar dishes in 85 ms"
   */
  renderResults(matches, summary) {
    this.resultsSection.hidden = false;
    this.resultsSummary.textContent = summary;
    this.results.replaceChildren(
      ...matches.map((match, i) => {
        const label = labelOf(match);
        const similarity = percent(match.similarity);
        const li = this.doc.createElement("li");
        const button = this.doc.createElement("button");
        button.type = "button";
        button.className = "result";
        button.dataset.id = String(match.id);
        button.dataset.key = match.key;
        button.dataset.label = match.label ?? "";
        button.dataset.url = match.url;
        button.title = `Find dishes similar to this ${label}`;
        const img = this.doc.createElement("img");
        img.src = match.url;
        img.alt = `${label} — ${similarity} similar`;
        img.width = THUMB_SIZE;
        img.height = THUMB_SIZE;
        img.decoding = "async";
        img.loading = i < 8 ? "eager" : "lazy";
        const caption = this.doc.createElement("span");
        caption.className = "caption";
        caption.setAttribute("aria-hidden", "true"); // the alt text already says it
        const name = this.doc.createElement("span");
        name.className = "label";
        name.textContent = label;
        const score = this.doc.createElement("span");
        score.className = "similarity";
        score.textContent = similarity;
        caption.append(name, score);
        button.append(img, caption);
        li.append(button, this.voteButtons(match, null));
        return li;
      }),
    );
  }

  /** Moves keyboard focus to the results heading (after the focused result was replaced). */
  focusResults() {
    this.resultsHeading.focus({ preventScroll: false });
  }

  /**
   * Describes the service in the footer (index size, model), or clears it.
   * @param {string} text
   */
  setServiceInfo(text) {
    this.service.textContent = text;
  }
}

// Words for people about the search service's answers: what each HTTP status means, in one table.

const TOO_SLOW = "The search service took too long to answer. Please try again.";
const PHOTO_FORMATS = "Try a JPEG, PNG or WebP photo.";

/**
 * `text` with a closing full stop unless it already ends a sentence.
 * @param {string} text
 * @returns {string}
 */
export function withStop(text) {
  const trimmed = String(text).trim();
  return /[.!?…]$/.test(trimmed) ? trimmed : `${trimmed}.`;
}

/**
 * `text` as a sentence: capital first letter, closing full stop.
 * @param {string} text
 * @returns {string}
 */
export function sentence(text) {
  const stopped = withStop(text);
  return stopped.charAt(0).toUpperCase() + stopped.slice(1);
}

const aboutTheFile = (message) => `That file could not be searched: ${withStop(message)}`;

/**
 * Per status: `fallback`, the message when the answer's body did not say what went wrong (e.g. an API Gateway
 * error page), and `explain`, how that message (the service's own words or the fallback) is put to a person.
 */
const STATUSES = {
  400: { fallback: `That file is not an image the service can read. ${PHOTO_FORMATS}`, explain: aboutTheFile },
  404: { fallback: "That image is no longer in the collection." },
  413: { fallback: "That photo is too large to upload.", explain: aboutTheFile },
  415: { fallback: `That kind of file is not supported. ${PHOTO_FORMATS}`, explain: aboutTheFile },
  422: { fallback: "The service did not accept the request." },
  429: { fallback: "The service is busy. Please try again in a moment." },
  503: {
    fallback: "The search service is not ready yet.",
    explain: (message) =>
      "The search service is still warming up and did not become ready. " +
      `${sentence(message)} Please try again in a minute.`,
  },
  504: { fallback: TOO_SLOW },
};

/** Messages for requests that got no usable answer, by the ApiError code they carry. */
export const NO_ANSWER = {
  timeout: TOO_SLOW,
  network: "Could not reach the search service. Check your connection and try again.",
  bad_response: "The search service sent an answer this page cannot read.",
};

/**
 * What an error answer with `status` means, for when its body did not say.
 * @param {number} status
 * @returns {string}
 */
export function fallbackMessage(status) {
  return STATUSES[status]?.fallback ?? `The search service answered with an error (HTTP ${status}).`;
}

/**
 * Puts an error's `message` to a person in the light of its HTTP `status` (0: no answer arrived).
 * @param {number} status
 * @param {string} message
 * @returns {string}
 */
export function explain(status, message) {
  return (STATUSES[status]?.explain ?? sentence)(message);
}

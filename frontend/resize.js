// Shrinks a photo in the browser before upload: shorter side to the model's resize size, EXIF orientation
// applied, re-encoded as JPEG. The service would resize it anyway; sending 30 KB instead of 5 MB is the point.

const JPEG_QUALITY = 0.9;

/** The file could not be decoded by this browser (not an image, or a format it does not read, e.g. HEIC). */
export class NotDecodableError extends Error {
  constructor(message) {
    super(message);
    this.name = "NotDecodableError";
  }
}

/**
 * Size that brings the shorter side to `shortSide`, keeping the aspect ratio; never enlarges.
 * @param {number} width
 * @param {number} height
 * @param {number} shortSide
 * @returns {{width: number, height: number}}
 */
export function targetSize(width, height, shortSide) {
  const scale = Math.min(1, shortSide / Math.min(width, height));
  if (scale === 1) return { width, height };
  if (width <= height) return { width: shortSide, height: Math.max(1, Math.round(height * scale)) };
  return { width: Math.max(1, Math.round(width * scale)), height: shortSide };
}

async function decode(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    // Older engines reject the options bag; an <img> decodes what createImageBitmap cannot and applies
    // EXIF orientation through CSS `image-orientation: from-image` (the default).
  }
  const url = URL.createObjectURL(file);
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    return img;
  } catch {
    throw new NotDecodableError("This browser cannot read that file as an image.");
  } finally {
    URL.revokeObjectURL(url);
  }
}

async function scaled(source, size) {
  if (typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap) {
    try {
      return await createImageBitmap(source, {
        resizeWidth: size.width,
        resizeHeight: size.height,
        resizeQuality: "high",
      });
    } catch {
      return source;
    }
  }
  return source;
}

function toJpeg(canvas, quality) {
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new NotDecodableError("The photo could not be re-encoded."))),
      "image/jpeg",
      quality,
    );
  });
}

/**
 * Decodes `file` (EXIF orientation honoured), scales its shorter side down to `shortSide` and encodes a JPEG.
 * @param {Blob} file
 * @param {{shortSide?: number, quality?: number}} [options] `shortSide` is normally the model's resize size;
 *   without it the photo keeps its size and is only re-encoded
 * @returns {Promise<{blob: Blob, width: number, height: number, originalWidth: number, originalHeight: number}>}
 * @throws {NotDecodableError} when the browser cannot decode the file
 */
export async function resizeForUpload(file, { shortSide = Infinity, quality = JPEG_QUALITY } = {}) {
  const source = await decode(file);
  const originalWidth = source.naturalWidth ?? source.width;
  const originalHeight = source.naturalHeight ?? source.height;
  if (!originalWidth || !originalHeight) throw new NotDecodableError("The image has no pixels.");
  const size = targetSize(originalWidth, originalHeight, shortSide);
  const pixels = await scaled(source, size);
  try {
    const canvas = document.createElement("canvas");
    canvas.width = size.width;
    canvas.height = size.height;
    const ctx = canvas.getContext("2d", { alpha: false });
    ctx.fillStyle = "#fff"; // transparent PNG areas become white, not black
    ctx.fillRect(0, 0, size.width, size.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(pixels, 0, 0, size.width, size.height);
    const blob = await toJpeg(canvas, quality);
    return { blob, width: size.width, height: size.height, originalWidth, originalHeight };
  } finally {
    if (pixels !== source) pixels.close?.();
    source.close?.();
  }
}

// edgeship's browser runtime: one model file of an edgeship manifest, run in the page.
//   .onnx   -> onnxruntime-web, wasm backend (SIMD; threads when the page is cross-origin isolated)
//   .tflite -> LiteRT.js (@litertjs/core), its wasm (XNNPACK) CPU path; the threaded build when isolated
// Inputs are given as the manifest's inputs (float32 images, int64 token ids) and cast here to what the artifact
// takes (its manifest entry: int32 ids for .tflite, int8 with scale/zero point for a static-int8 .tflite); outputs
// come back as float32, dequantized the same way. bench() returns the JSON of edgeship_runtime.bench.
const VENDOR = new URL('./vendor/', import.meta.url);

const TYPED = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  int32: Int32Array, int64: BigInt64Array, bool: Uint8Array,
};

export function formatOf(path) {
  const p = String(path).toLowerCase();
  return p.endsWith('.onnx') ? 'onnx' : p.endsWith('.tflite') ? 'tflite' : null;
}

export const RUNTIMES = {onnx: 'onnxruntime-web', tflite: 'LiteRT.js'};

let versionsPromise = null;
export function vendorVersions() {
  versionsPromise ??= fetch(new URL('versions.json', VENDOR)).then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  return versionsPromise;
}

/** The effective wasm thread count for a request (null: the runtime's default). */
function threadCount(requested) {
  if (!self.crossOriginIsolated) return 1;     // no SharedArrayBuffer: single-threaded wasm only
  if (requested) return requested;
  return Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2));   // onnxruntime-web's own default
}

class OrtModel {
  static async open(bytes, threads) {
    const ort = await import(new URL('ort/ort.wasm.min.mjs', VENDOR).href);
    if (!OrtModel.configured) {
      ort.env.wasm.wasmPaths = new URL('ort/', VENDOR).href;
      ort.env.wasm.numThreads = threadCount(threads);   // read once, when the wasm module starts
      ort.env.wasm.proxy = false;
      ort.env.logLevel = 'error';
      OrtModel.configured = threadCount(threads);
    } else if (OrtModel.configured !== threadCount(threads)) {
      throw new Error(`onnxruntime-web started with ${OrtModel.configured} thread(s) in this page; ` +
                      'open a new page for another thread count');
    }
    const m = new OrtModel();
    m.ort = ort;
    m.session = await ort.InferenceSession.create(bytes, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
    m.inputNames = m.session.inputNames;
    m.outputNames = m.session.outputNames;
    m.threads = ort.env.wasm.numThreads || OrtModel.configured;
    m.version = ort.env.versions?.web || ort.env.versions?.common || null;
    return m;
  }

  prepare(arrays) {   // [{data: TypedArray, dims}] in the model's input order -> feeds
    const feeds = {};
    arrays.forEach((a, k) => {
      const type = a.data instanceof BigInt64Array ? 'int64' : a.data instanceof Int32Array ? 'int32'
        : a.data instanceof Int8Array ? 'int8' : a.data instanceof Uint8Array ? 'uint8' : 'float32';
      feeds[this.inputNames[k]] = new this.ort.Tensor(type, a.data, a.dims);
    });
    return feeds;
  }

  async run(feeds) {
    const out = await this.session.run(feeds);
    return this.outputNames.map((n) => ({data: out[n].data, dims: Array.from(out[n].dims), dtype: out[n].type}));
  }

  release() { this.session?.release?.(); }
}

class LiteRtModel {
  static async open(bytes, threads) {
    const lrt = await import(new URL('litertjs/core/index.js', VENDOR).href);
    const n = threadCount(threads);
    if (!LiteRtModel.loaded) {
      // the threaded wasm build needs SharedArrayBuffer (cross-origin isolation); one build per page
      LiteRtModel.loaded = lrt.loadLiteRt(new URL('litertjs/wasm/', VENDOR).href, {threads: n > 1});
      LiteRtModel.threaded = n > 1;
    }
    await LiteRtModel.loaded;
    if (LiteRtModel.threaded !== (n > 1)) {
      throw new Error('LiteRT.js was loaded ' + (LiteRtModel.threaded ? 'threaded' : 'single-threaded') +
                      ' in this page; open a new page for another thread count');
    }
    const m = new LiteRtModel();
    m.lrt = lrt;
    m.model = await lrt.loadAndCompile(bytes, {accelerator: 'wasm', cpuOptions: {numThreads: n}});
    m.inputNames = m.model.getInputDetails().map((d) => d.name);
    m.outputNames = m.model.getOutputDetails().map((d) => d.name);
    m.threads = n;
    m.version = null;
    return m;
  }

  prepare(arrays) {
    return arrays.map((a) => new this.lrt.Tensor(a.data, a.dims));
  }

  async run(tensors) {
    const outs = await this.model.run(tensors);
    const res = [];
    for (const t of outs) {
      const data = t.toTypedArray().slice();   // copy out of the wasm heap before the tensor is freed
      res.push({data, dims: Array.from(t.type?.layout?.dimensions ?? [data.length]), dtype: t.type?.dtype});
      t.delete();
    }
    return res;
  }

  releaseFeeds(tensors) { for (const t of tensors) t.delete(); }
  release() { this.model?.delete(); }
}

/** Fetch and open ``url`` (an .onnx or .tflite); returns the model and its timings. */
export async function openModel(url, {threads = null, format = null} = {}) {
  format ??= formatOf(url);
  if (!format) throw new Error(`${url}: no browser runtime for this file type (the page runs .onnx and .tflite)`);
  const t0 = performance.now();
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const t1 = performance.now();
  const cls = format === 'onnx' ? OrtModel : LiteRtModel;
  let model;
  try {
    model = await cls.open(bytes, threads);
  } catch (e) {
    throw new Error(`${RUNTIMES[format]} could not load ${url.split('/').pop()}: ${errorText(e)}`, {cause: e});
  }
  model.format = format;
  model.runtime = RUNTIMES[format];
  if (!model.version) model.version = (await vendorVersions())[format === 'onnx' ? 'onnxruntime-web' : '@litertjs/core'] ?? null;
  return {model, fetch_ms: t1 - t0, load_ms: performance.now() - t1, bytes: bytes.length};
}

export function errorText(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'number') return `wasm error code ${e}`;   // some wasm builds throw a bare pointer
  return String(e.message ?? e);
}

// ------------------------------------------------------------------------------------------ dtypes and quantization

function roundHalfAway(v) { return v < 0 ? -Math.round(-v) : Math.round(v); }

/** ``a`` ({data, dims}) as the artifact input ``info`` ({dtype, quantization}) wants it. */
export function castInput(a, info) {
  const dtype = info?.dtype || 'float32';
  const T = TYPED[dtype];
  if (!T) throw new Error(`input ${info?.name}: dtype ${dtype} is not supported in the browser`);
  const src = a.data;
  if (src instanceof T && !(info?.quantization && 'iu'.includes(dtype[0]) && !(src instanceof Float32Array))) {
    return {data: src, dims: a.dims};
  }
  const out = new T(src.length);
  const q = info?.quantization;
  const isInt = dtype !== 'float32' && dtype !== 'float64';
  if (q && isInt && (src instanceof Float32Array || src instanceof Float64Array)) {
    const lim = {int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], int32: [-(2 ** 31), 2 ** 31 - 1]}[dtype];
    for (let i = 0; i < src.length; i++) {
      out[i] = Math.min(lim[1], Math.max(lim[0], roundHalfAway(src[i] / q.scale) + q.zero_point));
    }
  } else if (T === BigInt64Array) {
    for (let i = 0; i < src.length; i++) out[i] = BigInt(Math.round(Number(src[i])));
  } else {
    for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
  }
  return {data: out, dims: a.dims};
}

/** An output ({data, dims}) as float32, dequantized with the artifact output ``info``'s scale and zero point. */
export function dequantize(o, info) {
  const q = info?.quantization;
  const out = new Float32Array(o.data.length);
  for (let i = 0; i < o.data.length; i++) {
    const v = Number(o.data[i]);
    out[i] = q && !(o.data instanceof Float32Array) ? (v - q.zero_point) * q.scale : v;
  }
  return {data: out, dims: o.dims};
}

// ---------------------------------------------------------------------------------------------------- random inputs

function mulberry32(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random feeds for the manifest's input specs, as edgeship_runtime.bench draws them: floats ~ N(0, 1), integers
 * in [low, high) (default [0, 100)). Dynamic dimensions (null) are taken as 1. */
export function randomInputs(specs, seed = 0) {
  const rnd = mulberry32(seed + 1);
  return specs.map((s) => {
    const dims = s.shape.map((d) => (d == null ? 1 : d));
    const n = dims.reduce((a, b) => a * b, 1);
    const dtype = s.dtype || 'float32';
    if (dtype.startsWith('float')) {
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) {   // Box-Muller
        data[i] = Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
      }
      return {data, dims};
    }
    const lo = s.low ?? 0, hi = s.high ?? 100;
    const T = TYPED[dtype] || Int32Array;
    const data = new T(n);
    for (let i = 0; i < n; i++) {
      const v = lo + Math.floor(rnd() * (hi - lo));
      data[i] = T === BigInt64Array ? BigInt(v) : v;
    }
    return {data, dims};
  });
}

// ------------------------------------------------------------------------------------------------------ measuring

function percentile(sorted, q) {   // numpy's default (linear)
  const idx = (sorted.length - 1) * q;
  const lo = Math.floor(idx), hi = Math.ceil(idx);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (idx - lo);
}

export function stats(ms) {
  const n = ms.length, s = [...ms].sort((a, b) => a - b);
  const mean = ms.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(ms.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return {mean, std, p50: percentile(s, 0.5), p90: percentile(s, 0.9), p99: percentile(s, 0.99), min: s[0], max: s[n - 1]};
}

/** The page's memory in MB and how it was read: performance.measureUserAgentSpecificMemory() (cross-origin isolated
 * pages; JS heaps and wasm memories) where allowed, else performance.memory.usedJSHeapSize (the JS heap only). */
export async function memory(timeoutMs = 8000) {
  if (self.crossOriginIsolated && performance.measureUserAgentSpecificMemory) {
    try {
      const r = await Promise.race([performance.measureUserAgentSpecificMemory(),
        new Promise((_, rej) => setTimeout(() => rej(new Error('timeout')), timeoutMs))]);
      return {mb: r.bytes / 2 ** 20, method: 'performance.measureUserAgentSpecificMemory'};
    } catch (e) { /* fall through */ }
  }
  if (performance.memory) {
    return {mb: performance.memory.usedJSHeapSize / 2 ** 20, method: 'performance.memory.usedJSHeapSize'};
  }
  return {mb: null, method: 'none'};
}

/** Benchmark ``art`` (a manifest artifact entry) at ``url``: the JSON keys of ``python -m edgeship_runtime.bench``. */
export async function bench(url, art, manifest, {runs = 50, warmup = 5, threads = null, seed = 0, shapes = null} = {}) {
  if (!(runs >= 1) || !(warmup >= 0)) throw new Error(`runs must be >= 1 and warmup >= 0, got ${runs} and ${warmup}`);
  const mem0 = await memory();
  const {model, fetch_ms, load_ms} = await openModel(url, {threads, format: art.format});
  try {
    const mem1 = await memory();
    const specs = manifest.inputs.map((s) => ({...s, shape: shapes?.[s.name] ?? s.shape}));
    const raw = randomInputs(specs, seed);
    const arrays = raw.map((a, k) => castInput(a, art.inputs?.[k]));
    const feeds = model.prepare(arrays);
    try {
      let t0 = performance.now();
      await model.run(feeds);
      const first_run_ms = performance.now() - t0;
      for (let i = 0; i < warmup; i++) await model.run(feeds);
      const times = new Float64Array(runs);
      for (let i = 0; i < runs; i++) {
        t0 = performance.now();
        await model.run(feeds);
        times[i] = performance.now() - t0;
      }
      const lat = stats(Array.from(times));
      const mem2 = await memory();
      const batch = arrays[0]?.dims?.[0] ?? 1;
      const isolated = self.crossOriginIsolated;
      return {
        runtime: model.runtime, runtime_version: model.version, format: art.format, model: url,
        threads: model.threads, load_ms, first_run_ms, warmup, runs, latency_ms: lat,
        cv: lat.mean > 0 ? lat.std / lat.mean : 0, batch, items_per_s: lat.p50 > 0 ? batch * 1000 / lat.p50 : null,
        peak_rss_mb: mem2.mb, load_rss_delta_mb: mem0.mb == null || mem1.mb == null ? null : mem1.mb - mem0.mb,
        inputs: arrays.map((a, k) => ({name: model.inputNames[k] ?? manifest.inputs[k].name, shape: a.dims,
                                       dtype: art.inputs?.[k]?.dtype ?? manifest.inputs[k].dtype})),
        memory: {method: mem2.method, after_load_mb: mem1.mb, after_runs_mb: mem2.mb, before_load_mb: mem0.mb},
        fetch_ms, cross_origin_isolated: isolated, user_agent: navigator.userAgent,
        notes: [`memory is the page's, read with ${mem2.method} (not a process RSS): peak_rss_mb is after the ` +
                'timed runs, load_rss_delta_mb across loading the model',
                `load_ms is creating the ${model.runtime} session from the fetched bytes; fetching them took ` +
                `${fetch_ms.toFixed(1)} ms`,
                isolated ? `wasm threads: ${model.threads}` : 'the page is not cross-origin isolated: wasm runs on one thread'],
      };
    } finally {
      model.releaseFeeds?.(feeds);
    }
  } finally {
    model.release();
  }
}

/** Run ``art`` at ``url`` on each sample (a list of manifest-order inputs {data, dims}); float32 outputs per sample. */
export async function runSamples(url, art, samples, {threads = null} = {}) {
  const {model} = await openModel(url, {threads, format: art.format});
  try {
    const outs = [];
    for (const sample of samples) {
      const feeds = model.prepare(sample.map((a, k) => castInput(a, art.inputs?.[k])));
      try {
        const res = await model.run(feeds);
        outs.push(res.map((o, k) => dequantize(o, art.outputs?.[k])));
      } finally {
        model.releaseFeeds?.(feeds);
      }
    }
    return {outputs: outs, runtime: model.runtime, runtime_version: model.version, threads: model.threads};
  } finally {
    model.release();
  }
}

// ---------------------------------------------------------------------------------------------------- preprocessing

/** An image (HTMLImageElement / ImageBitmap) as the manifest input ``spec`` wants it: centre-cropped to the input's
 * aspect, resized, colour order, value range, mean/std, NCHW or NHWC. Returns {data: Float32Array, dims}. */
export function preprocessImage(img, spec) {
  const dims = spec.shape.map((d) => (d == null ? 1 : d));
  const nhwc = (spec.layout || 'NCHW').toUpperCase() === 'NHWC';
  const [c, h, w] = nhwc ? [dims[3], dims[1], dims[2]] : [dims[1], dims[2], dims[3]];
  const p = spec.preprocess || {};
  const canvas = document.createElement('canvas');
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const iw = img.naturalWidth || img.width, ih = img.naturalHeight || img.height;
  const scale = Math.min(iw / w, ih / h);
  const sw = w * scale, sh = h * scale;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(img, (iw - sw) / 2, (ih - sh) / 2, sw, sh, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h).data;
  const [lo, hi] = p.value_range || [0, 1];
  const mean = p.mean || [0, 0, 0], std = p.std || [1, 1, 1];
  const bgr = (p.color_order || 'RGB').toUpperCase() === 'BGR';
  const data = new Float32Array(c * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 4;
      for (let k = 0; k < c; k++) {
        const src = c === 1 ? (px[i] * 0.299 + px[i + 1] * 0.587 + px[i + 2] * 0.114) : px[i + (bgr ? 2 - k : k)];
        const v = ((src / 255) * (hi - lo) + lo - (mean[k] ?? 0)) / (std[k] ?? 1);
        data[nhwc ? (y * w + x) * c + k : k * h * w + y * w + x] = v;
      }
    }
  }
  return {data, dims};
}

export function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

export function topK(scores, k = 5) {
  return Array.from(scores, (v, i) => [i, v]).sort((a, b) => b[1] - a[1]).slice(0, k);
}

// ---------------------------------------------------------------------------------- bytes <-> base64 for the driver

export function fromBase64(b64, dtype, dims) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const T = TYPED[dtype];
  if (!T) throw new Error(`dtype ${dtype} cannot be sent to the page`);
  return {data: new T(bytes.buffer), dims};
}

export function toBase64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** runSamples for the driver: samples and outputs as {data: base64, dims, dtype}. */
export async function runEncoded(url, art, samples, opts = {}) {
  const decoded = samples.map((s) => s.map((a) => fromBase64(a.data, a.dtype, a.dims)));
  const r = await runSamples(url, art, decoded, opts);
  return {...r, outputs: r.outputs.map((s) => s.map((o) => ({data: toBase64(o.data), dims: o.dims, dtype: 'float32'})))};
}

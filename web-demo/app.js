// The demo page: reads model/manifest.json (what `edgeship package --app web` wrote), runs the chosen artifact on a
// dropped image (top-5 and latency) or on typed token ids, and has a benchmark mode for edgeship.
//
// URL parameters:
//   manifest=URL        the manifest to read (default model/manifest.json)
//   artifact=FMT:PREC   which artifact (default the first one listed, which is the best the web target runs)
//   threads=N           wasm threads (default: the runtime's, when the page is cross-origin isolated; else 1)
//   image=URL           classify this image once loaded (what the screenshot test uses)
//   mode=bench&runs=N&warmup=M   benchmark; the result (edgeship_runtime.bench's JSON) is shown, set on
//                       window.edgeshipResult and POSTed to ./bench-result when the page is served by edgeship
// edgeship drives the page through window.edgeship (bench, runSamples; see runtime.js).
import * as rt from './runtime.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {manifest: null, base: null, art: null, labels: null, model: null, modelKey: null};

function showError(e) {
  $('error').textContent = rt.errorText(e);
  console.error(rt.errorText(e));
}

async function loadManifest(url) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`no manifest at ${url} (HTTP ${resp.status}): package a model first: ` +
                                'edgeship package dist/NAME --app web');
  const manifest = await resp.json();
  const base = new URL('.', new URL(url, location.href)).href;
  let labels = null;
  if (manifest.labels) {
    const r = await fetch(new URL(manifest.labels, base));
    if (r.ok) labels = (await r.text()).split('\n').map((l) => l.trim()).filter((l) => l.length);
  }
  return {manifest, base, labels};
}

function isClassifier(m) { return String(m.task || '').endsWith('classification'); }

async function currentModel() {
  const key = `${state.art.format}:${state.art.precision}`;
  if (state.modelKey !== key) {
    state.model?.release();
    const threads = params.get('threads') ? Number(params.get('threads')) : null;
    const {model, load_ms} = await rt.openModel(new URL(state.art.path, state.base).href, {threads, format: state.art.format});
    state.model = model;
    state.modelKey = key;
    $('backend').textContent = `${model.runtime} ${model.version ?? ''} · wasm · ${model.threads} thread(s)` +
      `${self.crossOriginIsolated ? '' : ' (not cross-origin isolated)'} · loaded in ${load_ms.toFixed(1)} ms`;
  }
  return state.model;
}

async function infer(inputs) {   // manifest-order inputs -> float32 outputs, timed
  const model = await currentModel();
  const feeds = model.prepare(inputs.map((a, k) => rt.castInput(a, state.art.inputs?.[k])));
  try {
    await model.run(feeds);                      // the first run pays for lazy initialisation
    const t0 = performance.now();
    const outs = await model.run(feeds);
    const ms = performance.now() - t0;
    return {outputs: outs.map((o, k) => rt.dequantize(o, state.art.outputs?.[k])), ms};
  } finally {
    model.releaseFeeds?.(feeds);
  }
}

function showResult(outputs, ms) {
  const tbody = $('top5').querySelector('tbody');
  tbody.innerHTML = '';
  const logits = Array.from(outputs[0].data);
  const meaning = state.manifest.outputs?.[0]?.meaning;
  const probs = meaning === 'probabilities' ? logits : rt.softmax(logits);
  const top = rt.topK(probs, Math.min(5, probs.length));
  top.forEach(([i, p], r) => {
    const tr = document.createElement('tr');
    const label = state.labels?.[i] ?? `class ${i}`;
    tr.innerHTML = `<td>${r + 1}</td><td class="label"></td><td class="p">${(p * 100).toFixed(1)}%</td>` +
                   `<td><div class="bar" style="width:${Math.max(2, p * 120)}px"></div></td>`;
    tr.querySelector('.label').textContent = label;
    tbody.appendChild(tr);
  });
  $('top5').hidden = false;
  $('latency').textContent = `${ms.toFixed(2)} ms per inference (${state.model.runtime}, ${state.art.format}:${state.art.precision})`;
  window.edgeshipTop5 = top.map(([i, p]) => ({index: i, label: state.labels?.[i] ?? `class ${i}`, p}));
}

async function classifyImage(img) {
  $('error').textContent = '';
  const spec = state.manifest.inputs[0];
  const input = rt.preprocessImage(img, spec);
  window.edgeshipLastInput = {data: rt.toBase64(input.data), dims: input.dims, dtype: 'float32'};
  const {outputs, ms} = await infer([input]);
  showResult(outputs, ms);
}

async function showImage(src) {
  const img = $('preview');
  img.src = src;
  await img.decode();
  img.hidden = false;
  await classifyImage(img);
}

async function runTokens() {
  $('error').textContent = '';
  const spec = state.manifest.inputs[0];
  const dims = spec.shape.map((d) => (d == null ? 1 : d));
  const n = dims.reduce((a, b) => a * b, 1);
  const ids = $('tokens').value.split(/[\s,]+/).filter((t) => t.length).map(Number);
  if (ids.some((v) => !Number.isInteger(v))) throw new Error('token ids are integers, separated by spaces or commas');
  const data = new BigInt64Array(n);            // padded with 0 / truncated to the input's length
  ids.slice(0, n).forEach((v, i) => { data[i] = BigInt(v); });
  const {outputs, ms} = await infer([{data, dims}]);
  if (isClassifier(state.manifest)) showResult(outputs, ms);
  else {
    $('result').hidden = false;
    $('result').textContent = JSON.stringify(Array.from(outputs[0].data).slice(0, 64).map((v) => +v.toFixed(5)));
    $('latency').textContent = `${ms.toFixed(2)} ms per inference`;
  }
}

async function benchMode() {
  const result = await rt.bench(new URL(state.art.path, state.base).href, state.art, state.manifest, {
    runs: Number(params.get('runs') || 50), warmup: Number(params.get('warmup') || 5),
    threads: params.get('threads') ? Number(params.get('threads')) : null});
  window.edgeshipResult = result;
  $('result').hidden = false;
  $('result').textContent = JSON.stringify(result, null, 2);
  $('latency').textContent = `p50 ${result.latency_ms.p50.toFixed(3)} ms (${result.runs} runs)`;
  fetch('./bench-result', {method: 'POST', headers: {'Content-Type': 'application/json'},
                           body: JSON.stringify(result)}).catch(() => {});
}

async function main() {
  const versions = await rt.vendorVersions();
  $('about').textContent = `onnxruntime-web ${versions['onnxruntime-web'] ?? '(missing: make web-setup)'} · ` +
    `LiteRT.js ${versions['@litertjs/core'] ?? '(missing: make web-setup)'} · ` +
    `cross-origin isolated: ${self.crossOriginIsolated ? 'yes' : 'no'}`;
  if (params.get('mode') === 'driver') return;   // edgeship calls window.edgeship itself
  Object.assign(state, await loadManifest(params.get('manifest') || 'model/manifest.json'));
  const arts = state.manifest.artifacts.filter((a) => rt.formatOf(a.path));
  if (!arts.length) throw new Error('the manifest lists no .onnx or .tflite artifact: the browser runs those two');
  const want = params.get('artifact');
  state.art = arts.find((a) => `${a.format}:${a.precision}` === want) || arts[0];
  for (const a of arts) {
    const o = document.createElement('option');
    o.value = `${a.format}:${a.precision}`;
    o.textContent = `${state.manifest.name} · ${a.format} ${a.precision} (${(a.size_bytes / 1024).toFixed(0)} KiB)`;
    o.selected = a === state.art;
    $('artifact').appendChild(o);
  }
  $('artifact').onchange = async () => {
    state.art = arts.find((a) => `${a.format}:${a.precision}` === $('artifact').value);
    try { if (!$('preview').hidden) await classifyImage($('preview')); } catch (e) { showError(e); }
  };
  const spec = state.manifest.inputs[0];
  const image = spec.dtype.startsWith('float') && spec.shape.length === 4;
  $(image ? 'image-input' : 'token-input').hidden = false;
  if (image) {
    const drop = $('drop');
    drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
    drop.ondragleave = () => drop.classList.remove('over');
    drop.ondrop = (e) => {
      e.preventDefault(); drop.classList.remove('over');
      const f = e.dataTransfer.files[0];
      if (f) showImage(URL.createObjectURL(f)).catch(showError);
    };
    $('file').onchange = () => { const f = $('file').files[0]; if (f) showImage(URL.createObjectURL(f)).catch(showError); };
  } else {
    $('run-tokens').onclick = () => runTokens().catch(showError);
  }
  if (params.get('mode') === 'bench') await benchMode();
  else if (params.get('image')) await showImage(params.get('image'));
}

window.edgeship = {...rt, ready: false};
main().then(() => { window.edgeship.ready = true; window.edgeshipDone = true; })
  .catch((e) => { showError(e); window.edgeship.ready = true; window.edgeshipError = rt.errorText(e); });

// Copy the runtime files the page loads from node_modules/ (after `npm ci`) into vendor/: no bundler, no CDN.
//   vendor/ort/           onnxruntime-web's wasm build (ES module + its SIMD/threads wasm)
//   vendor/litertjs/      @litertjs/core (ES module), @litertjs/wasm-utils (its one import) and LiteRT's wasm files
//   vendor/versions.json  what was copied, by package version (edgeship reads it for report.json)
import {cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, renameSync} from 'node:fs';
import {dirname, join} from 'node:path';
import {fileURLToPath} from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nm = join(root, 'node_modules');
const FILES = {
  'onnxruntime-web': [
    ['dist/ort.wasm.min.mjs', 'ort/ort.wasm.min.mjs'],
    ['dist/ort-wasm-simd-threaded.mjs', 'ort/ort-wasm-simd-threaded.mjs'],
    ['dist/ort-wasm-simd-threaded.wasm', 'ort/ort-wasm-simd-threaded.wasm'],
    ['LICENSE', 'ort/LICENSE'],
  ],
  '@litertjs/core': [
    ['dist/index.js', 'litertjs/core/index.js'],
    ['wasm', 'litertjs/wasm'],
  ],
  '@litertjs/wasm-utils': [
    ['dist/index.js', 'litertjs/wasm-utils/index.js'],
  ],
};

const stage = join(root, '.vendor-stage');
rmSync(stage, {recursive: true, force: true});
const versions = {};
for (const [pkg, files] of Object.entries(FILES)) {
  const dir = join(nm, pkg);
  if (!existsSync(join(dir, 'package.json'))) {
    console.error(`error: ${pkg} is not in web-demo/node_modules: run \`npm ci\` in web-demo/ (or \`make web-setup\`)`);
    process.exit(2);
  }
  versions[pkg] = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
  for (const [src, dst] of files) {
    if (!existsSync(join(dir, src))) {
      if (src === 'LICENSE') continue;
      console.error(`error: ${pkg} ${versions[pkg]} has no ${src}: is package-lock.json's version installed?`);
      process.exit(2);
    }
    mkdirSync(dirname(join(stage, dst)), {recursive: true});
    cpSync(join(dir, src), join(stage, dst), {recursive: true});
  }
}
writeFileSync(join(stage, 'versions.json'), JSON.stringify(versions, null, 2) + '\n');
rmSync(join(root, 'vendor'), {recursive: true, force: true});
renameSync(stage, join(root, 'vendor'));   // whole or nothing: a half-copied vendor/ never stays behind
console.log(`web-demo/vendor: ${Object.entries(versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);

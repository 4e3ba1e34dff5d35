// Bundle covidet's diagnostic viewer (Cornerstone3D) into ../static/viewer/, served by covidet at
// /static/viewer/. Everything the page needs is in that folder: the page script, its lazily loaded
// chunks, the DICOM decoding web worker and the WebAssembly codecs (no CDN: the viewer works offline).
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, "../static/viewer");

// The decoders ask for these names under the loader's wasmBasePath (/static/viewer/codecs/).
const CODECS = {
  "charlswasm_decode.wasm": "@cornerstonejs/codec-charls/decodewasm",
  "openjpegwasm_decode.wasm": "@cornerstonejs/codec-openjpeg/decodewasm",
  "jpegxlwasm_decode.wasm": "@cornerstonejs/codec-libjxl/decodewasm",
  "libjpegturbowasm_decode.wasm": "@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm",
  "openjphjs.wasm": "@cornerstonejs/codec-openjph/wasm",
};

function packageFile(specifier) {
  // The codec packages map these subpaths in their "exports"; resolve them from the package folder.
  const [scope, name, ...rest] = specifier.split("/");
  const pkgDir = path.join(here, "node_modules", scope, name);
  const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
  return path.join(pkgDir, pkg.exports[`./${rest.join("/")}`]);
}

await rm(out, { recursive: true, force: true });
await mkdir(path.join(out, "codecs"), { recursive: true });

await esbuild.build({
  absWorkingDir: here,
  entryPoints: {
    viewer3d: "src/main.js",
    // The loader starts its worker as new URL("./decodeImageFrameWorker.js", import.meta.url): the
    // worker bundle sits next to viewer3d.js under that name.
    decodeImageFrameWorker: "node_modules/@cornerstonejs/dicom-image-loader/dist/esm/decodeImageFrameWorker.js",
  },
  outdir: out,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "browser",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: false,
  legalComments: "linked",
  chunkNames: "chunks/[name]-[hash]",
  // Emscripten glue of the codecs names Node modules on a path never taken in a browser.
  external: ["fs", "path", "crypto", "module", "worker_threads"],
  logLevel: "warning",
});

for (const [file, specifier] of Object.entries(CODECS)) {
  await copyFile(packageFile(specifier), path.join(out, "codecs", file));
}
// The output is built, never committed: it ignores itself (no edit of the repository's .gitignore).
await writeFile(path.join(out, ".gitignore"), "*\n");
await writeFile(
  path.join(out, "BUILD.txt"),
  "Built by `make viewer` from src/covidet/web/viewer_src (npm ci && npm run build); not committed.\n",
);
console.log(`viewer bundle written to ${path.relative(process.cwd(), out)}`);
